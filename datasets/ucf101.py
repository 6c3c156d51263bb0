"""UCF101 (Soomro, Zamir & Shah 2012): 13,320 videos of 101 actions with three official splits.

`dataset.root` holds both official archives as they unpack:

    <root>/UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi     from UCF101.rar
    <root>/ucfTrainTestlist/classInd.txt                            from UCF101TrainTestSplits-RecognitionTask.zip
                           /trainlist0{1,2,3}.txt  lines `ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`
                           /testlist0{1,2,3}.txt   lines `ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`

Classes follow classInd.txt (1-based there, 0-based here); a test video's label is its folder's
class. The official files have CRLF line endings, and names differ in case between the lists, the
folders and the files (folder `HandstandPushups` holds `v_HandStandPushups_g01_c01.avi`), so every
name matches case-insensitively. Videos of one group (`gXX`, the same actor and setting) are never
split between train and test in the official lists; a warning says so if edited lists break that.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from mvcoding.datasets import DatasetIndex, VideoRecord
from mvcoding.datasets.listfile import (
    bad_line,
    check_disjoint,
    check_missing,
    dataset_root,
    read_lines,
    scan_videos,
    split_number,
    video_id,
    warn_unlisted,
)
from mvcoding.errors import UserError

log = logging.getLogger(__name__)

VIDEO_DIR = "UCF-101"
SPLIT_DIR = "ucfTrainTestlist"
PAGE = "https://www.crcv.ucf.edu/data/UCF101.php"
VIDEOS_ARCHIVE = "UCF101.rar"
SPLITS_ARCHIVE = "UCF101TrainTestSplits-RecognitionTask.zip"
_GROUP = re.compile(r"_g(\d+)_c(\d+)$", re.IGNORECASE)


def group_of(vid: str) -> str:
    """The group of a UCF101 video id, `<class folder>/gXX` (e.g. "ApplyEyeMakeup/g08").

    A group is one actor in one setting; its clips must all be on the same side of a split.
    """
    parts = vid.replace("\\", "/").split("/")
    match = _GROUP.search(parts[-1])
    if match is None or len(parts) < 2:
        raise ValueError(f"{vid!r} is not a UCF101 video id like UCF-101/<Class>/v_<Class>_gXX_cYY")
    return f"{parts[-2]}/g{int(match.group(1)):02d}"


def read_class_index(path) -> list[str]:
    """Class names from classInd.txt (lines `1 ApplyEyeMakeup`, numbered 1, 2, ... in order)."""
    fix = f"unzip {SPLITS_ARCHIVE} (from {PAGE}) into dataset.root"
    classes: list[str] = []
    for lineno, line in read_lines(path, what="class index", fix=fix):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise bad_line(path, lineno, line, "not `number class`", "`1 ApplyEyeMakeup`")
        if int(parts[0]) != len(classes) + 1:
            raise bad_line(path, lineno, line, f"class number {parts[0]} out of order", f"{len(classes) + 1}")
        if parts[1].lower() in (c.lower() for c in classes):
            raise bad_line(path, lineno, line, f"class {parts[1]} listed twice", "each class once")
        classes.append(parts[1])
    if not classes:
        raise UserError(f"class index {path} is empty; {fix}")
    return classes


def escapes_folder(rel: str) -> str | None:
    """Why a split file's path (POSIX separators) would leave the folder it is relative to: "absolute" or
    "through '..'"; None when it stays inside."""
    if rel.startswith("/") or re.match(r"[A-Za-z]:", rel):
        return "absolute"
    if ".." in rel.split("/"):
        return "through '..'"
    return None


def _read_split(path, class_of: dict[str, int], *, train: bool) -> list[tuple[str, int]]:
    """(`<class>/<file>` as written, 0-based label) per line of a trainlist or testlist file."""
    fix = f"unzip {SPLITS_ARCHIVE} (from {PAGE}) into dataset.root"
    expected = "`Class/v_Class_gXX_cYY.avi 1`" if train else "`Class/v_Class_gXX_cYY.avi`"
    rows: list[tuple[str, int]] = []
    for lineno, line in read_lines(path, what="split file", fix=fix):
        parts = line.split()
        rel = parts[0].replace("\\", "/")
        leaves = escapes_folder(rel)
        if leaves:
            raise bad_line(path, lineno, line, f"path leaves {VIDEO_DIR}/ ({leaves})", expected)
        if len(parts) > 2 or (train and len(parts) != 2):
            raise bad_line(path, lineno, line, "wrong number of fields", expected)
        if rel.count("/") != 1:
            raise bad_line(path, lineno, line, "not a `Class/file` path", expected)
        folder = rel.split("/")[0]
        label = class_of.get(folder.lower())
        if label is None:
            raise bad_line(path, lineno, line, f"class {folder} is not in classInd.txt", "a class of classInd.txt")
        if len(parts) == 2:  # trainlist (testlist lines carry no label; accept one if present)
            if not parts[1].isdigit():
                raise bad_line(path, lineno, line, "label is not a number", expected)
            if int(parts[1]) - 1 != label:
                problem = f"label {parts[1]} but {folder} is class {label + 1} in classInd.txt"
                raise bad_line(path, lineno, line, problem, "the folder's classInd number")
        rows.append((rel, label))
    return rows


def _looks_like_video_dir(root) -> bool:
    """Whether dataset.root seems to be the UCF-101 folder itself rather than the folder holding it."""
    return root.name == VIDEO_DIR or any(root.glob("*/v_*_g*_c*.avi"))


def load(cfg: Mapping) -> DatasetIndex:
    """Index split `dataset.split` of UCF101 under `dataset.root` (layout in the module docstring).

    cfg keys: root, split (1-3), allow_missing (skip listed videos missing on disk with a warning
    instead of failing; default false). Reads directory entries and the split files only.
    """
    get = f"download {VIDEOS_ARCHIVE} and {SPLITS_ARCHIVE} from {PAGE} and unpack both into it"
    root = dataset_root(cfg, missing_hint=get)
    split = split_number(cfg)
    allow_missing = bool(cfg.get("allow_missing", False))
    video_dir, split_dir = root / VIDEO_DIR, root / SPLIT_DIR
    if not video_dir.is_dir() and _looks_like_video_dir(root):
        raise UserError(
            f"dataset.root={root} looks like the {VIDEO_DIR}/ folder itself; set dataset.root to the folder "
            f"holding {VIDEO_DIR}/ and {SPLIT_DIR}/ (here perhaps dataset.root={root.parent})"
        )
    if not video_dir.is_dir():
        raise UserError(
            f"dataset.root={root} has no {VIDEO_DIR}/ folder; unpack {VIDEOS_ARCHIVE} there "
            f"(unrar x {VIDEOS_ARCHIVE} {root}/)"
        )
    if not split_dir.is_dir():
        raise UserError(
            f"dataset.root={root} has no {SPLIT_DIR}/ folder; "
            f"unpack {SPLITS_ARCHIVE} there (unzip {SPLITS_ARCHIVE} -d {root})"
        )
    on_disk = scan_videos(video_dir, (".avi",))
    if not on_disk:
        raise UserError(
            f"{video_dir} holds no <Class>/*.avi videos; "
            f"unpack {VIDEOS_ARCHIVE} there (unrar x {VIDEOS_ARCHIVE} {root}/)"
        )

    classes = read_class_index(split_dir / "classInd.txt")
    class_of = {name.lower(): i for i, name in enumerate(classes)}
    files = {"train": split_dir / f"trainlist{split:02d}.txt", "test": split_dir / f"testlist{split:02d}.txt"}
    lists = f"{files['train'].name} and {files['test'].name}"

    subsets: dict[str, list[VideoRecord]] = {}
    listed: set[str] = set()
    missing: list[str] = []
    for subset, path in files.items():
        records: dict[str, VideoRecord] = {}
        for rel, label in _read_split(path, class_of, train=subset == "train"):
            listed.add(rel.lower())
            video = on_disk.get(rel.lower())
            if video is None:
                missing.append(rel)
                continue
            vid = video_id(video, root)
            records.setdefault(vid, VideoRecord(vid, str(video), label))
        subsets[subset] = list(records.values())

    fix = f"restore them (unrar x {VIDEOS_ARCHIVE} {root}/)"
    check_missing(missing, where=str(video_dir), lists=lists, fix=fix, allow=allow_missing)
    check_disjoint(subsets["train"], subsets["test"], lists=lists)
    unlisted = sorted(str(p.relative_to(video_dir).as_posix()) for k, p in on_disk.items() if k not in listed)
    warn_unlisted(unlisted, where=str(video_dir), lists=lists)
    _warn_crossing_groups(subsets["train"], subsets["test"], lists)
    return DatasetIndex(
        name=str(cfg.get("name", "ucf101")),
        root=str(root),
        classes=classes,
        train=subsets["train"],
        test=subsets["test"],
        split=split,
        extra={"video_dir": str(video_dir), "split_dir": str(split_dir), "missing": missing, "unlisted": unlisted},
    )


def _warn_crossing_groups(train: list[VideoRecord], test: list[VideoRecord], lists: str) -> None:
    """Warn when a group (gXX) has clips on both sides: the test score would be inflated."""

    def groups(records):
        out = set()
        for r in records:
            try:
                out.add(group_of(r.video_id).lower())
            except ValueError:
                pass
        return out

    both = sorted(groups(train) & groups(test))
    if both:
        log.warning(
            "%d UCF101 group(s) have clips in both train and test of %s (e.g. %s); the official splits never do "
            "this, so test accuracy will be inflated: use the official split files",
            len(both),
            lists,
            ", ".join(both[:5]),
        )
