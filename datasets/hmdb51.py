"""HMDB51 (Kuehne et al. 2011): 6,766 clips of 51 actions with three official splits.

`dataset.root` holds the videos and the split files, under either name:

    <root>/videos/<class>/<video>.avi        or  <root>/hmdb51_org/<class>/<video>.avi
    <root>/splits/<class>_test_split{1,2,3}.txt  or  <root>/testTrainMulti_7030_splits/...

`hmdb51_org.rar` unpacks to one .rar per class, each unpacking to `<class>/<video>.avi`;
`test_train_splits.rar` unpacks to `testTrainMulti_7030_splits/`. A split file line is
`<video>.avi <tag>`: tag 1 train, 2 test, 0 unused in that split. Classes are the class names
sorted alphabetically (as torchvision orders them); labels are 0-based.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

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

VIDEO_DIRS = ("videos", "hmdb51_org")
SPLIT_DIRS = ("splits", "testTrainMulti_7030_splits")
PAGE = "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"
VIDEOS_ARCHIVE = "hmdb51_org.rar"
SPLITS_ARCHIVE = "test_train_splits.rar"
TRAIN, TEST, UNUSED = 1, 2, 0


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _find_folders(root: Path) -> tuple[Path, Path]:
    """(video folder, split folder) under root, or UserError saying which is missing and how to get it."""
    video_dir = _first_dir(root, VIDEO_DIRS)
    split_dir = _first_dir(root, SPLIT_DIRS)
    if video_dir is None:
        raise UserError(
            f"dataset.root={root} has neither {VIDEO_DIRS[0]}/ nor {VIDEO_DIRS[1]}/; download {VIDEOS_ARCHIVE} from "
            f"{PAGE}, unpack it into {root}/{VIDEO_DIRS[1]}/ and unpack each per-class .rar there "
            f'(cd {root}/{VIDEO_DIRS[1]} && for f in *.rar; do unrar x "$f"; done)'
        )
    if split_dir is None:
        raise UserError(
            f"dataset.root={root} has neither {SPLIT_DIRS[0]}/ nor {SPLIT_DIRS[1]}/; download {SPLITS_ARCHIVE} "
            f"from {PAGE} and unpack it there (unrar x {SPLITS_ARCHIVE} {root}/)"
        )
    return video_dir, split_dir


def _split_files(split_dir: Path, split: int) -> dict[str, Path]:
    """{class name: its split file} for one split, from `<class>_test_split<k>.txt` names."""
    suffix = f"_test_split{split}.txt"
    files = {
        p.name[: -len(suffix)]: p for p in split_dir.iterdir() if p.name.endswith(suffix) and len(p.name) > len(suffix)
    }
    if not files:
        raise UserError(
            f"{split_dir} has no <class>{suffix} files; download {SPLITS_ARCHIVE} from {PAGE} and unpack it into "
            f"{split_dir.parent}/ (unrar x {SPLITS_ARCHIVE} {split_dir.parent}/)"
        )
    return files


def _read_split(path: Path) -> list[tuple[str, int]]:
    """(video file name, tag) per line of one `<class>_test_split<k>.txt`."""
    fix = f"unpack {SPLITS_ARCHIVE} (from {PAGE}) again"
    expected = "`<video>.avi <0|1|2>`"
    rows: dict[str, int] = {}
    for lineno, line in read_lines(path, what="split file", fix=fix):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[0].lower().endswith(".avi"):
            raise bad_line(path, lineno, line, "not `<video>.avi <tag>`", expected)
        if "/" in parts[0] or "\\" in parts[0]:  # e.g. ../other_class/v.avi
            problem = "a path, not the name of a video in this class's folder"
            raise bad_line(path, lineno, line, problem, expected)
        if parts[1] not in ("0", "1", "2"):
            raise bad_line(path, lineno, line, f"tag {parts[1]} is not 0, 1 or 2", expected)
        name, tag = parts[0], int(parts[1])
        if rows.get(name, tag) != tag:
            raise bad_line(path, lineno, line, f"video listed earlier with tag {rows[name]}", "one tag per video")
        rows[name] = tag
    return list(rows.items())


def load(cfg: Mapping) -> DatasetIndex:
    """Index split `dataset.split` of HMDB51 under `dataset.root` (layout in the module docstring).

    cfg keys: root, split (1-3), allow_missing (skip listed videos missing on disk with a warning
    instead of failing; default false). Reads directory entries and the split files only.
    """
    root = dataset_root(
        cfg, missing_hint=f"download {VIDEOS_ARCHIVE} and {SPLITS_ARCHIVE} from {PAGE} and unpack both into it"
    )
    split = split_number(cfg)
    allow_missing = bool(cfg.get("allow_missing", False))
    video_dir, split_dir = _find_folders(root)
    on_disk = scan_videos(video_dir, (".avi",))
    if not on_disk:
        if any(video_dir.glob("*.rar")):
            raise UserError(
                f"{video_dir} holds the per-class .rar archives but no <class>/ folders; unpack them "
                f'(cd {video_dir} && for f in *.rar; do unrar x "$f"; done)'
            )
        raise UserError(f"{video_dir} holds no <class>/*.avi videos; unpack {VIDEOS_ARCHIVE} (from {PAGE}) there")

    files = _split_files(split_dir, split)
    folders = {key.split("/")[0]: on_disk[key].parent.name for key in on_disk}
    known = {c.lower() for c in files}
    for folder in sorted(folders.values()):
        if folder.lower() not in known:
            raise UserError(
                f"class folder {video_dir / folder} has no split file {split_dir}/{folder}_test_split{split}.txt; "
                f"unpack {SPLITS_ARCHIVE} (from {PAGE}) into {root}/ or move that folder away"
            )

    classes = sorted(files)
    subsets: dict[int, list[VideoRecord]] = {TRAIN: [], TEST: []}
    listed: set[str] = set()
    missing: list[str] = []
    unused = 0
    for label, name in enumerate(classes):
        for video_name, tag in _read_split(files[name]):
            key = f"{name}/{video_name}".lower()
            listed.add(key)
            if tag == UNUSED:
                unused += 1
                continue
            video = on_disk.get(key)
            if video is None:
                missing.append(f"{name}/{video_name}")
                continue
            subsets[tag].append(VideoRecord(video_id(video, root), str(video), label))

    lists = f"{split_dir.name}/*_test_split{split}.txt"
    fix = f"restore them from {VIDEOS_ARCHIVE}"
    check_missing(missing, where=str(video_dir), lists=lists, fix=fix, allow=allow_missing)
    check_disjoint(subsets[TRAIN], subsets[TEST], lists=lists)
    unlisted = sorted(p.relative_to(video_dir).as_posix() for k, p in on_disk.items() if k not in listed)
    warn_unlisted(unlisted, where=str(video_dir), lists=lists)
    return DatasetIndex(
        name=str(cfg.get("name", "hmdb51")),
        root=str(root),
        classes=classes,
        train=subsets[TRAIN],
        test=subsets[TEST],
        split=split,
        extra={
            "video_dir": str(video_dir),
            "split_dir": str(split_dir),
            "unused": unused,
            "missing": missing,
            "unlisted": unlisted,
        },
    )
