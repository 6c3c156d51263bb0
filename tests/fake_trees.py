"""Small fake UCF101 and HMDB51 trees in the exact official layouts, with short real videos.

For any test that needs a dataset on disk (`from fake_trees import make_ucf101_tree`):

    root = make_ucf101_tree(tmp_path / "ucf101")      # UCF-101/ + ucfTrainTestlist/, 3 splits
    root = make_hmdb51_tree(tmp_path / "hmdb51")      # videos/ + splits/, 3 splits

Videos are MJPG .avi files that decord reads (8 frames of 32x32 by default): each frame is the
class's colour plus a square whose position moves with the frame index and the video's index, so
videos differ from each other and frames differ within a video. `empty=True` writes zero-byte
files instead, for indexing tests at full scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvcoding.video import write_video

# Official-order classes with the real archive's quirks: Hammering / HammerThrow are in classInd
# order (case-insensitive), not Python's sorted() order, and the HandstandPushups folder holds
# files named v_HandStandPushups_*.avi (as the real UCF-101 folder does, and its lists say).
UCF101_CLASSES = ("ApplyEyeMakeup", "Hammering", "HammerThrow", "HandstandPushups")
UCF101_FILE_NAMES = {"HandstandPushups": "HandStandPushups"}
HMDB51_CLASSES = ("brush_hair", "cartwheel", "draw_sword")


def synthetic_frames(label: int, index: int, *, frames: int = 8, size: int = 32) -> np.ndarray:
    """Frames (T, H, W, 3) uint8: a class colour with a square that moves; deterministic."""
    rng = np.random.default_rng(1000 * label + index)
    colour = np.array([(70 * label) % 256, (130 + 50 * label) % 256, (200 - 40 * label) % 256], np.uint8)
    video = np.empty((frames, size, size, 3), np.uint8)
    video[:] = colour
    side = max(2, size // 4)
    x0, y0 = rng.integers(0, size - side, 2)
    for t in range(frames):
        x = (x0 + t * (1 + index % 3)) % (size - side)
        video[t, y0 : y0 + side, x : x + side] = 255 - colour
    return video


def _write(path: Path, label: int, index: int, *, frames: int, size: int, empty: bool) -> None:
    if empty:
        open(path, "wb").close()  # the class folder exists: made once per class
    else:
        write_video(path, synthetic_frames(label, index, frames=frames, size=size))


def ucf101_test_groups(split: int, groups: int) -> list[int]:
    """Test groups of a split: the official blocks g01-g07, g08-g14, g15-g21 of 25, scaled to `groups`."""
    block = max(1, round(groups * 7 / 25))
    if 3 * block > groups:
        raise ValueError(f"need at least 3 groups for three disjoint test blocks, got {groups}")
    return list(range(block * (split - 1) + 1, block * split + 1))


def make_ucf101_tree(
    root: str | Path,
    *,
    classes: tuple[str, ...] = UCF101_CLASSES,
    groups: int = 6,
    clips: int = 2,
    frames: int = 8,
    size: int = 32,
    crlf: bool = True,
    empty: bool = False,
) -> Path:
    """Write `root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi` and `root/ucfTrainTestlist/` (3 splits).

    classes: in classInd order. groups, clips: gXX and cYY per class (official: 25 groups, 4-7
    clips). The split files are as the official ones: classInd.txt `1 Class`, trainlist0k.txt
    `Class/v_..avi 1`, testlist0k.txt path only, CRLF line endings (`crlf=False` for LF).
    Returns root.
    """
    root = Path(root)
    newline = "\r\n" if crlf else "\n"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    paths: dict[str, list[tuple[int, str]]] = {}  # class -> [(group, "Class/v_....avi")]
    index = 0
    for label, name in enumerate(classes):
        file_class = UCF101_FILE_NAMES.get(name, name)
        (root / "UCF-101" / name).mkdir(parents=True, exist_ok=True)
        paths[name] = []
        for g in range(1, groups + 1):
            for c in range(1, clips + 1):
                rel = f"{name}/v_{file_class}_g{g:02d}_c{c:02d}.avi"
                _write(root / "UCF-101" / rel, label, index, frames=frames, size=size, empty=empty)
                paths[name].append((g, rel))
                index += 1
    (lists / "classInd.txt").write_bytes(
        "".join(f"{i} {name}{newline}" for i, name in enumerate(classes, start=1)).encode()
    )
    for split in (1, 2, 3):
        test_groups = set(ucf101_test_groups(split, groups))
        train, test = [], []
        for label, name in enumerate(classes, start=1):
            for g, rel in paths[name]:
                if g in test_groups:
                    test.append(rel + newline)
                else:
                    train.append(f"{rel} {label}{newline}")
        (lists / f"trainlist{split:02d}.txt").write_bytes("".join(train).encode())
        (lists / f"testlist{split:02d}.txt").write_bytes("".join(test).encode())
    return root


def hmdb51_tags(split: int, videos: int) -> list[int]:
    """Tags (1 train, 2 test, 0 unused) of a class's videos in one split.

    Every third video is test (a different third per split); the last train video is unused.
    """
    tags = [2 if i % 3 == split - 1 else 1 for i in range(videos)]
    train = [i for i, t in enumerate(tags) if t == 1]
    if len(train) > 1:
        tags[train[-1]] = 0
    return tags


def make_hmdb51_tree(
    root: str | Path,
    *,
    classes: tuple[str, ...] = HMDB51_CLASSES,
    videos: int = 6,
    frames: int = 8,
    size: int = 32,
    official_names: bool = False,
    empty: bool = False,
) -> Path:
    """Write `root/videos/<class>/<video>.avi` and `root/splits/<class>_test_split{1,2,3}.txt`.

    official_names: use the unpacked archives' folder names `hmdb51_org/` and
    `testTrainMulti_7030_splits/` instead. Split lines are `<video>.avi <tag> ` (with the
    official files' trailing space). Returns root.
    """
    root = Path(root)
    video_dir = root / ("hmdb51_org" if official_names else "videos")
    split_dir = root / ("testTrainMulti_7030_splits" if official_names else "splits")
    split_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for label, name in enumerate(classes):
        names = [f"Clip{i:02d}_{name}_u_nm_np1_fr_goo_{i}.avi" for i in range(videos)]
        (video_dir / name).mkdir(parents=True, exist_ok=True)
        for video in names:
            _write(video_dir / name / video, label, index, frames=frames, size=size, empty=empty)
            index += 1
        for split in (1, 2, 3):
            lines = [f"{video} {tag} \n" for video, tag in zip(names, hmdb51_tags(split, videos), strict=True)]
            (split_dir / f"{name}_test_split{split}.txt").write_text("".join(lines))
    return root
