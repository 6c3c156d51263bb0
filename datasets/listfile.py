"""A plain list file for any collection: one `path label` per line, a train and a test list.

    dataset:
      name: listfile
      root: /data/myvideos        # relative video paths and list paths resolve against it
      train_list: train.txt       # "{split}" in the name is replaced by dataset.split (train{split}.txt)
      test_list: test.txt
      classes: null               # optional file with one class name per line (line i is label i)

Lines are `path label`: path relative to dataset.root or absolute (it may hold spaces: the label is
the last field), label a 0-based int. Without a classes file the classes are "0" .. "max label"
(labels below MAX_CLASSES); with one, labels are below its number of lines.
Blank lines and lines starting with `#` are skipped. A relative path that leaves dataset.root
through `..` is indexed like an absolute one, with a warning naming the line (an absolute path says
so on purpose; a `..` is more often a root set one folder too deep).

A video's id is its path relative to dataset.root without the extension (`a/v0.avi` -> `a/v0`), as
for UCF101 and HMDB51. Two different files that would get the same id (`a/v0.avi` and `a/v0.mp4`)
both keep their extension in it (`a/v0.avi`, `a/v0.mp4`), with a warning: they are two videos,
and neither is dropped. Ids are the keys of the caches, so ids that stay the same for every other
file beat a rule that puts extensions on every id; adding such a twin to the lists renames the
first file's id (its cache entries are then filled again). Ids that collide even with their
extensions (a file outside the root whose absolute path reads like a relative one) are an error
naming both lines. (Such twins share one sidecar .wav, `a/v0.wav`, for the audio view.)

This module also holds the helpers the UCF101 and HMDB51 readers share: the root and split checks,
line reading with `file:line` errors, the folder scan, and the missing / unlisted video reports.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mvcoding.datasets import DatasetIndex, VideoRecord
from mvcoding.errors import UserError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")
SHOW = 5  # names shown in one-line messages about many videos
MAX_CLASSES = 100_000  # labels without a classes file are below this (ImageNet-21k has 21,841 classes)


# ----------------------------------------------------------------------------- shared helpers
def _is(test, path: Path) -> bool:
    """test(path) (Path.is_file, is_dir, exists), False for a path the OS cannot look up (ENAMETOOLONG)."""
    try:
        return test(path)
    except OSError:
        return False


def dataset_root(cfg: Mapping, *, missing_hint: str) -> Path:
    """dataset.root as an absolute path; UserError (with `missing_hint`) when unset or absent."""
    root = cfg.get("root")
    if root is None or str(root).strip() == "":
        raise UserError(f"dataset.root is not set; pass dataset.root=/path/to/{cfg.get('name', 'dataset')}")
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not _is(Path.is_dir, path):
        what = "is not a folder" if _is(Path.exists, path) else "does not exist"
        raise UserError(f"dataset.root={path} {what}; {missing_hint}")
    return path


def split_number(cfg: Mapping) -> int:
    """dataset.split as an int in 1..3, or UserError."""
    split = cfg.get("split", 1)
    try:
        number = int(split)
    except (TypeError, ValueError):
        number = 0
    if number not in (1, 2, 3) or str(split).strip() != str(number):
        raise UserError(f"dataset.split={split!r} is not valid; choose one of: 1, 2, 3")
    return number


def read_lines(path: Path, *, what: str, fix: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as (1-based line number, stripped text).

    Accepts CRLF and LF endings and non-UTF-8 bytes (decoded as Latin-1). `what` names the file in
    messages ("split file"), `fix` says how to get a good one.
    """
    if not _is(Path.is_file, path):
        state = "is not a file" if _is(Path.exists, path) else "is missing"
        raise UserError(f"{what} {path} {state}; {fix}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}; {fix}") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    text = text.lstrip("\ufeff")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def bad_line(path: Path, lineno: int, line: str, problem: str, expected: str) -> UserError:
    """The UserError for one malformed line: `file:line: problem ('text'); expected ...`."""
    shown = line if len(line) <= 80 else line[:77] + "..."
    return UserError(f"{path}:{lineno}: {problem} ({shown!r}); expected {expected}; fix or replace that line")


def scan_videos(folder: Path, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> dict[str, Path]:
    """Videos one level down (`folder/<class>/<file>`), keyed by lower-cased `<class>/<file>`.

    Lower-case keys let split files match the disk whatever the case (the official UCF101 lists and
    folders disagree on it in places). Only directory entries are read: nothing is decoded.
    """
    exts = tuple(e.lower() for e in extensions)
    found: dict[str, Path] = {}
    with os.scandir(folder) as classes:
        for entry in classes:
            if not entry.is_dir():
                continue
            with os.scandir(entry.path) as files:
                for f in files:
                    if f.name.lower().endswith(exts) and f.is_file():
                        found[f"{entry.name}/{f.name}".lower()] = Path(f.path)
    return found


def video_id(path: Path, root: Path) -> str:
    """The video's id: its path relative to `root`, POSIX separators, without extension.

    A video outside `root` (an absolute path in a list file) keeps its absolute path, minus the
    leading separator.
    """
    path = Path(os.path.abspath(path))
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(str(path).lstrip("/\\"))
    return rel.with_suffix("").as_posix()


def check_missing(missing: list[str], *, where: str, lists: str, fix: str, allow: bool) -> None:
    """Report videos that split files name but the disk lacks: UserError, or a warning if `allow`."""
    if not missing:
        return
    names = ", ".join(missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
    noun = "video" if len(missing) == 1 else "videos"
    if allow:
        log.warning("skipping %d %s named in %s but missing under %s: %s", len(missing), noun, lists, where, names)
        return
    raise UserError(
        f"{len(missing)} {noun} named in {lists} missing under {where}: {names}; {fix}, "
        f"or set dataset.allow_missing=true to skip them"
    )


def warn_unlisted(unlisted: list[str], *, where: str, lists: str) -> None:
    """Log videos that are on disk but in no split file (they are left out of the index)."""
    if not unlisted:
        return
    names = ", ".join(unlisted[:SHOW]) + (", ..." if len(unlisted) > SHOW else "")
    log.warning(
        "%d video(s) under %s are in none of %s and are left out: %s; add them to a split file or move them away",
        len(unlisted),
        where,
        lists,
        names,
    )


def check_disjoint(train: list[VideoRecord], test: list[VideoRecord], *, lists: str) -> None:
    """UserError when a video is both in train and in test."""
    both = sorted({r.video_id for r in train} & {r.video_id for r in test})
    if both:
        names = ", ".join(both[:SHOW]) + (", ..." if len(both) > SHOW else "")
        raise UserError(
            f"{len(both)} video(s) are both train and test in {lists}: {names}; "
            "each video must be in only one of them, fix the split files"
        )


# ----------------------------------------------------------------------------- list files
def _resolve(path_text: str, root: Path) -> Path:
    path = Path(os.path.expanduser(path_text))
    return path if path.is_absolute() else root / path


def _list_path(cfg: Mapping, key: str, root: Path, split: int) -> Path:
    value = cfg.get(key)
    if value is None or str(value).strip() == "":
        raise UserError(f"dataset.{key} is not set; pass dataset.{key}=FILE with one `path label` per line")
    text = str(value).replace("{split}", str(split))
    path = _resolve(text, root)
    if not _is(Path.exists, path) and not Path(text).is_absolute() and _is(Path.exists, Path(text)):
        path = Path(os.path.abspath(text))  # relative to the working directory
    return path


def _read_classes(path: Path) -> list[str]:
    lines = read_lines(path, what="classes file", fix="give one class name per line, or set dataset.classes=null")
    classes = [text for _, text in lines]
    seen: dict[str, int] = {}
    for lineno, name in lines:
        if name in seen:
            raise bad_line(path, lineno, name, f"class repeats line {seen[name]}", "each class name once")
        seen[name] = lineno
    if not classes:
        raise UserError(f"classes file {path} is empty; give one class name per line, or set dataset.classes=null")
    return classes


def _leaves_root(path_text: str, root: Path) -> bool:
    """Whether a relative list-file path resolves outside `root` through `..` (lexically; absolute paths
    and `~` are not relative)."""
    path = Path(os.path.expanduser(path_text))
    if path.is_absolute():
        return False
    inside = os.path.normpath(root / path)
    return os.path.commonpath([inside, os.path.normpath(root)]) != os.path.normpath(root)


def _read_list(path: Path, root: Path, key: str) -> list[tuple[Path, int, int, str]]:
    """(video path, label, line number, line text) for each entry of one list file."""
    fix = f"set dataset.{key} to a file with one `path label` per line"
    entries = []
    leaving: list[tuple[int, str]] = []
    for lineno, line in read_lines(path, what=f"list file (dataset.{key})", fix=fix):
        if line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise bad_line(path, lineno, line, "no label", "`path label`")
        if not re.fullmatch(r"[+-]?[0-9]+", parts[1]):  # int() also reads 1_0 as 10, and other scripts' digits
            raise bad_line(path, lineno, line, "label is not an int", "`path label` with a 0-based int label")
        label = int(parts[1])
        if label < 0:
            raise bad_line(path, lineno, line, "negative label", "a 0-based label")
        if _leaves_root(parts[0], root):
            leaving.append((lineno, parts[0]))
        entries.append((_resolve(parts[0], root), label, lineno, line))
    if leaving:
        (lineno, text), more = leaving[0], len(leaving) - 1
        log.warning(
            "%s:%d: path %r leaves dataset.root=%s through '..'%s; such videos are indexed by their absolute "
            "path: check dataset.root, or write the path relative to it (or absolute, which is not warned about)",
            path,
            lineno,
            text,
            root,
            f" (and {more} more line{'s' if more > 1 else ''} of this file)" if more else "",
        )
    return entries


def _video_ids(entries: dict[str, list], lists: dict[str, Path], root: Path) -> dict[str, str]:
    """{absolute path: video id} of every listed file: video_id(), or the path relative to the root
    with its extension where two files would share an id (see the module docstring)."""
    first: dict[str, tuple[str, str, int, str]] = {}  # absolute path -> (id, list key, line, text)
    for key, rows in entries.items():
        for path, _, lineno, line in rows:
            first.setdefault(os.path.abspath(path), (video_id(path, root), key, lineno, line))
    by_id: dict[str, list[str]] = {}
    for path, (vid, *_) in first.items():
        by_id.setdefault(vid, []).append(path)
    ids = {path: vid for path, (vid, *_) in first.items()}
    twins = [paths for paths in by_id.values() if len(paths) > 1]
    for paths in twins:
        for path in paths:
            ids[path] = video_id(Path(path), root) + Path(path).suffix
    seen: dict[str, str] = {}
    for path in first:
        other = seen.setdefault(ids[path], path)
        if other != path:
            (_, k1, n1, l1), (_, k2, n2, _) = first[other], first[path]
            problem = f"video id {ids[path]} is also the id of {lists[k2]}:{n2} ({first[path][3]!r})"
            raise bad_line(lists[k1], n1, l1, problem, "paths that stay distinct without their extension")
    if twins:
        log.warning(
            "%d listed files share their path without the extension with another one; their video ids keep the "
            "extension so that each is a video of its own (e.g. %s)",
            sum(map(len, twins)),
            ", ".join(ids[p] for p in twins[0]),
        )
    return ids


def load(cfg: Mapping) -> DatasetIndex:
    """Index the videos of `dataset.train_list` and `dataset.test_list` (see the module docstring)."""
    root = dataset_root(cfg, missing_hint="set dataset.root to the folder the list files' paths are relative to")
    split = split_number(cfg)
    allow_missing = bool(cfg.get("allow_missing", False))
    lists = {key: _list_path(cfg, key, root, split) for key in ("train_list", "test_list")}
    entries = {key: _read_list(path, root, key) for key, path in lists.items()}

    classes_file = cfg.get("classes")
    if classes_file:
        classes = _read_classes(_resolve(str(classes_file), root))
    else:
        rows = [(key, row) for key, rows in entries.items() for row in rows]
        key, (_, top, lineno, line) = max(rows, key=lambda r: r[1][1], default=(None, (None, -1, 0, "")))
        if top >= MAX_CLASSES:  # the classes are "0".."max label": a label of 20 digits exhausted the memory
            problem = f"label {top} but without a classes file the labels must be below {MAX_CLASSES}"
            raise bad_line(
                lists[key], lineno, line, problem, "labels 0..number of classes - 1 (or set dataset.classes)"
            )
        classes = [str(i) for i in range(top + 1)]
    if not classes:
        raise UserError(f"list files {lists['train_list']} and {lists['test_list']} are empty; add `path label` lines")

    subsets: dict[str, list[VideoRecord]] = {}
    missing: list[str] = []
    present = {key: [row for row in rows if _is(Path.is_file, row[0])] for key, rows in entries.items()}
    ids = _video_ids(present, lists, root)
    for key, rows in entries.items():
        records: dict[str, VideoRecord] = {}
        for path, label, lineno, line in rows:
            if label >= len(classes):
                problem = f"label {label} but the classes file {classes_file} has {len(classes)} classes"
                raise bad_line(lists[key], lineno, line, problem, f"a label in 0..{len(classes) - 1}")
            vid = ids.get(os.path.abspath(path))
            if vid is None:  # not a file
                missing.append(str(path))
                continue
            if vid in records and records[vid].label != label:
                problem = f"label {label} but an earlier line gives this video label {records[vid].label}"
                raise bad_line(lists[key], lineno, line, problem, "one label per video")
            records.setdefault(vid, VideoRecord(vid, os.path.abspath(path), label))
        subsets[key] = list(records.values())
    names = f"{lists['train_list'].name} and {lists['test_list'].name}"
    check_missing(missing, where=str(root), lists=names, fix="fix the paths", allow=allow_missing)
    check_disjoint(subsets["train_list"], subsets["test_list"], lists=names)
    return DatasetIndex(
        name=str(cfg.get("name", "listfile")),
        root=str(root),
        classes=classes,
        train=subsets["train_list"],
        test=subsets["test_list"],
        split=split,
        extra={"train_list": str(lists["train_list"]), "test_list": str(lists["test_list"]), "missing": missing},
    )
