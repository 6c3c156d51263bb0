"""Dataset indexes: UCF101, HMDB51 and list files on fake trees in the official layouts.

The trees come from fake_trees.py (real short videos, real split files for all three splits).
Agreement with torchvision: its UCF101 / HMDB51 classes are built on the same trees and must pick
the same train/test videos with the same class names. torchvision 0.29 needs torchcodec (or
pyav) to compute clip timestamps, neither of which is installed, so the tests hand it
`_precomputed_metadata` (8 frames per video, as written); its split parsing (`_select_fold`), its
class scan and its clip index then run unchanged.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from fake_trees import (
    HMDB51_CLASSES,
    UCF101_CLASSES,
    hmdb51_tags,
    make_hmdb51_tree,
    make_ucf101_tree,
    ucf101_test_groups,
)
from mvcoding.datasets import hmdb51, listfile, ucf101
from mvcoding.errors import UserError

GROUPS, CLIPS, FRAMES = 6, 2, 8
HMDB_VIDEOS = 6
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "dataset"


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory) -> Path:
    return make_ucf101_tree(tmp_path_factory.mktemp("ucf") / "ucf101", groups=GROUPS, clips=CLIPS, frames=FRAMES)


@pytest.fixture(scope="module", params=[False, True], ids=["videos+splits", "hmdb51_org+testTrainMulti"])
def hmdb_root(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hmdb") / "hmdb51"
    return make_hmdb51_tree(root, videos=HMDB_VIDEOS, frames=FRAMES, official_names=request.param)


def ucf_cfg(root, split=1, **extra) -> dict:
    return {"name": "ucf101", "root": str(root), "split": split, **extra}


def hmdb_cfg(root, split=1, **extra) -> dict:
    return {"name": "hmdb51", "root": str(root), "split": split, **extra}


def expect_error(load, cfg, *fragments: str) -> str:
    """Run load(cfg), expect a one-line UserError containing every fragment; return the message."""
    with pytest.raises(UserError) as info:
        load(cfg)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


# ----------------------------------------------------------------------------- UCF101
@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_index_follows_official_split(ucf_root, split):
    index = ucf101.load(ucf_cfg(ucf_root, split))
    n_test = len(UCF101_CLASSES) * len(ucf101_test_groups(split, GROUPS)) * CLIPS
    assert index.classes == list(UCF101_CLASSES)  # classInd order, not sorted(): Hammering < HammerThrow
    assert (len(index.train), len(index.test)) == (len(UCF101_CLASSES) * GROUPS * CLIPS - n_test, n_test)
    assert index.split == split and index.root == str(ucf_root)
    train_ids, test_ids = {r.video_id for r in index.train}, {r.video_id for r in index.test}
    assert not train_ids & test_ids
    all_ids = {p.relative_to(ucf_root).with_suffix("").as_posix() for p in ucf_root.glob("UCF-101/*/*.avi")}
    assert train_ids | test_ids == all_ids
    for record in index.train + index.test:
        assert Path(record.path).is_absolute() and Path(record.path).is_file()
        assert record.path == str(ucf_root / record.video_id) + ".avi"
        assert record.label == UCF101_CLASSES.index(record.video_id.split("/")[1])
    train_groups = {ucf101.group_of(r.video_id) for r in index.train}
    test_groups = {ucf101.group_of(r.video_id) for r in index.test}
    assert not train_groups & test_groups  # a group (actor, setting) never crosses train and test
    assert {int(g.split("/g")[1]) for g in test_groups} == set(ucf101_test_groups(split, GROUPS))


def test_ucf101_test_sets_of_the_three_splits_are_disjoint(ucf_root):
    tests = [{r.video_id for r in ucf101.load(ucf_cfg(ucf_root, s)).test} for s in (1, 2, 3)]
    assert not (tests[0] & tests[1]) and not (tests[1] & tests[2]) and not (tests[0] & tests[2])


def test_ucf101_keeps_the_disk_case_of_handstand_files(ucf_root):
    index = ucf101.load(ucf_cfg(ucf_root))
    ids = {r.video_id: r.label for r in index.train}
    assert ids["UCF-101/HandstandPushups/v_HandStandPushups_g03_c01"] == UCF101_CLASSES.index("HandstandPushups")


def test_ucf101_reads_lf_lists_and_matches_names_case_insensitively(tmp_path, ucf_root):
    root = make_ucf101_tree(tmp_path / "lf", groups=GROUPS, clips=CLIPS, crlf=False, empty=True)
    lists = root / "ucfTrainTestlist"
    lists.joinpath("classInd.txt").write_text(
        lists.joinpath("classInd.txt").read_text().replace("HandstandPushups", "HandStandPushups")
    )
    train = lists.joinpath("trainlist01.txt").read_text().replace("ApplyEyeMakeup/v_", "applyeyemakeup/V_")
    lists.joinpath("trainlist01.txt").write_text(train)
    index = ucf101.load(ucf_cfg(root))
    expected = ucf101.load(ucf_cfg(ucf_root))
    assert index.classes[3] == "HandStandPushups"  # the name as classInd.txt spells it
    assert [(r.video_id, r.label) for r in index.train] == [(r.video_id, r.label) for r in expected.train]
    assert [(r.video_id, r.label) for r in index.test] == [(r.video_id, r.label) for r in expected.test]


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_ucf101_agrees_with_torchvision(ucf_root, split, train):
    import torch
    from torchvision.datasets import UCF101
    from torchvision.datasets.folder import find_classes, make_dataset

    video_root = ucf_root / "UCF-101"
    _, class_to_idx = find_classes(video_root)
    paths = [p for p, _ in make_dataset(video_root, class_to_idx, ("avi",))]
    metadata = {
        "video_paths": paths,
        "video_pts": [torch.arange(FRAMES)] * len(paths),
        "video_fps": [25.0] * len(paths),
    }
    tv = UCF101(
        str(video_root),
        str(ucf_root / "ucfTrainTestlist"),
        frames_per_clip=FRAMES,
        step_between_clips=FRAMES,
        fold=split,
        train=train,
        _precomputed_metadata=metadata,
    )
    theirs = {tv.samples[i][0]: tv.classes[tv.samples[i][1]] for i in tv.indices}
    index = ucf101.load(ucf_cfg(ucf_root, split))
    ours = {r.path: index.classes[r.label] for r in (index.train if train else index.test)}
    assert ours == theirs
    assert len(tv) == len(ours)  # one 8-frame clip per selected video
    # torchvision numbers classes in sorted() order, which is not classInd's: the names agree, the
    # integer labels do not (HammerThrow is 1 there and 2 in the official classInd.txt).
    assert tv.classes != index.classes and sorted(tv.classes) == sorted(index.classes)


@pytest.mark.parametrize(
    "groups, clips",
    [(5, 2), pytest.param(25, 5, marks=pytest.mark.slow, id="full-size")],  # full size: ~1 ms a file to create
)
def test_ucf101_load_indexes_zero_byte_files(tmp_path, groups, clips):
    classes = tuple(f"Action{i:03d}" for i in range(101))
    root = make_ucf101_tree(tmp_path / "big", classes=classes, groups=groups, clips=clips, empty=True)
    index = ucf101.load(ucf_cfg(root, 2))  # zero-byte videos: any decoding would fail
    n = 101 * groups * clips
    assert len(index.train) + len(index.test) == n
    assert len(index.test) == 101 * len(ucf101_test_groups(2, groups)) * clips


def test_ucf101_load_does_not_open_videos(ucf_root, monkeypatch):
    import cv2
    import decord

    def refuse(*args, **kwargs):
        raise AssertionError("load() must not open videos")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    monkeypatch.setattr(cv2, "VideoCapture", refuse)
    assert len(ucf101.load(ucf_cfg(ucf_root)).train) > 0


def test_fake_ucf101_videos_decode(ucf_root):
    from mvcoding.video import read_frames

    frames = read_frames(str(next(ucf_root.glob("UCF-101/HammerThrow/*.avi"))))
    assert frames.shape == (FRAMES, 32, 32, 3) and frames.std() > 10  # a moving square on a colour


def _ucf_tree(tmp_path) -> Path:
    return make_ucf101_tree(tmp_path / "ucf101", groups=GROUPS, clips=CLIPS, empty=True)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_bytes().decode()
    assert old in text
    path.write_bytes(text.replace(old, new, 1).encode())


def _rm(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


UCF_ERRORS = {
    "root missing": (lambda r: _rm(r), {}, ["does not exist", "UCF101.rar", "UCF101TrainTestSplits"]),
    "root unset": (lambda r: None, {"root": None}, ["dataset.root is not set"]),
    "bad split": (lambda r: None, {"split": 4}, ["dataset.split=4", "1, 2, 3"]),
    "no videos folder": (lambda r: _rm(r / "UCF-101"), {}, ["no UCF-101/ folder", "unrar x UCF101.rar"]),
    "empty videos folder": (
        lambda r: (_rm(r / "UCF-101"), (r / "UCF-101").mkdir()),
        {},
        ["holds no <Class>/*.avi", "UCF101.rar"],
    ),
    "no split folder": (
        lambda r: _rm(r / "ucfTrainTestlist"),
        {},
        ["no ucfTrainTestlist/ folder", "unzip UCF101TrainTestSplits-RecognitionTask.zip"],
    ),
    "split file missing": (
        lambda r: _rm(r / "ucfTrainTestlist/testlist01.txt"),
        {},
        ["testlist01.txt is missing", "unzip"],
    ),
    "split file unreadable": (
        lambda r: (_rm(r / "ucfTrainTestlist/trainlist01.txt"), (r / "ucfTrainTestlist/trainlist01.txt").mkdir()),
        {},
        ["trainlist01.txt is not a file"],
    ),
    "classInd missing": (lambda r: _rm(r / "ucfTrainTestlist/classInd.txt"), {}, ["classInd.txt is missing"]),
    "classInd bad line": (
        lambda r: _edit(r / "ucfTrainTestlist/classInd.txt", "2 Hammering", "Hammering"),
        {},
        ["classInd.txt:2:", "`1 ApplyEyeMakeup`"],
    ),
    "train label not a number": (
        lambda r: _edit(r / "ucfTrainTestlist/trainlist01.txt", "g03_c02.avi 1", "g03_c02.avi one"),
        {},
        ["trainlist01.txt:2:", "label is not a number"],
    ),
    "train label disagrees with folder": (
        lambda r: _edit(r / "ucfTrainTestlist/trainlist01.txt", "g03_c01.avi 1", "g03_c01.avi 2"),
        {},
        ["trainlist01.txt:1:", "label 2 but ApplyEyeMakeup is class 1"],
    ),
    "test class unknown": (
        lambda r: _edit(r / "ucfTrainTestlist/testlist01.txt", "ApplyEyeMakeup/", "Juggling/"),
        {},
        ["testlist01.txt:1:", "class Juggling is not in classInd.txt"],
    ),
    "test line with no folder": (
        lambda r: _edit(r / "ucfTrainTestlist/testlist01.txt", "ApplyEyeMakeup/", ""),
        {},
        ["testlist01.txt:1:", "Class/v_Class_gXX_cYY.avi"],
    ),
    "video in train and test": (
        lambda r: _edit(
            r / "ucfTrainTestlist/testlist01.txt", "\r\n", "\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi\r\n"
        ),
        {},
        ["1 video(s) are both train and test", "v_ApplyEyeMakeup_g03_c01"],
    ),
    "train path leaving the tree": (
        lambda r: _edit(r / "ucfTrainTestlist/trainlist01.txt", "ApplyEyeMakeup/v_", "../UCF-101/ApplyEyeMakeup/v_"),
        {},
        ["trainlist01.txt:1:", "path leaves UCF-101/ (through '..')", "../UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g"],
    ),
    "test path leaving the tree as Class/..": (
        lambda r: _edit(r / "ucfTrainTestlist/testlist01.txt", "ApplyEyeMakeup/v_", "../v_"),
        {},
        ["testlist01.txt:1:", "path leaves UCF-101/ (through '..')"],
    ),
    "absolute test path": (
        lambda r: _edit(r / "ucfTrainTestlist/testlist01.txt", "ApplyEyeMakeup/v_", f"{r}/UCF-101/ApplyEyeMakeup/v_"),
        {},
        ["testlist01.txt:1:", "path leaves UCF-101/ (absolute)"],
    ),
    "test path one folder too deep": (
        lambda r: _edit(r / "ucfTrainTestlist/testlist01.txt", "ApplyEyeMakeup/v_", "ApplyEyeMakeup/sub/v_"),
        {},
        ["testlist01.txt:1:", "not a `Class/file` path"],
    ),
}


@pytest.mark.parametrize("case", list(UCF_ERRORS))
def test_ucf101_errors_say_what_and_how(tmp_path, case):
    edit, override, fragments = UCF_ERRORS[case]
    root = _ucf_tree(tmp_path)
    edit(root)
    expect_error(ucf101.load, {**ucf_cfg(root), **override}, *fragments)


def test_ucf101_root_pointing_at_the_video_folder_gets_a_hint(tmp_path):
    root = _ucf_tree(tmp_path)
    expect_error(ucf101.load, ucf_cfg(root / "UCF-101"), "looks like the UCF-101/ folder", f"dataset.root={root})")


def test_ucf101_unreadable_split_file(tmp_path, monkeypatch):
    root = _ucf_tree(tmp_path)
    read_bytes = Path.read_bytes

    def refuse(path):  # chmod 0 does not stop root, so fake the permission error
        if path.name == "trainlist01.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    expect_error(ucf101.load, ucf_cfg(root), "cannot read split file", "trainlist01.txt: Permission denied")


def test_ucf101_missing_videos_are_named_and_counted(tmp_path, caplog):
    root = _ucf_tree(tmp_path)
    (root / "UCF-101/Hammering/v_Hammering_g01_c02.avi").unlink()
    (root / "UCF-101/HammerThrow/v_HammerThrow_g05_c01.avi").unlink()
    msg = expect_error(ucf101.load, ucf_cfg(root), "2 videos", "Hammering/v_Hammering_g01_c02.avi", "allow_missing")
    assert "HammerThrow/v_HammerThrow_g05_c01.avi" in msg
    with caplog.at_level(logging.WARNING):
        index = ucf101.load(ucf_cfg(root, allow_missing=True))
    assert "skipping 2 videos" in caplog.text
    assert len(index.train) + len(index.test) == len(UCF101_CLASSES) * GROUPS * CLIPS - 2
    assert len(index.extra["missing"]) == 2


def test_ucf101_video_in_no_split_is_reported_not_fatal(tmp_path, caplog):
    root = _ucf_tree(tmp_path)
    (root / "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi").touch()
    with caplog.at_level(logging.WARNING):
        index = ucf101.load(ucf_cfg(root))
    assert "1 video(s)" in caplog.text and "ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi" in caplog.text
    assert index.extra["unlisted"] == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g99_c01.avi"]
    assert all("g99" not in r.video_id for r in index.train + index.test)


def test_ucf101_warns_when_edited_lists_split_a_group(tmp_path, caplog):
    root = _ucf_tree(tmp_path)
    lists = root / "ucfTrainTestlist"
    _edit(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c02.avi 1\r\n", "")
    _edit(lists / "testlist01.txt", "\r\n", "\r\nApplyEyeMakeup/v_ApplyEyeMakeup_g03_c02.avi\r\n")
    with caplog.at_level(logging.WARNING):
        ucf101.load(ucf_cfg(root))
    assert "1 UCF101 group(s)" in caplog.text and "applyeyemakeup/g03" in caplog.text


# ----------------------------------------------------------------------------- HMDB51
@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_index_follows_official_split(hmdb_root, split):
    index = hmdb51.load(hmdb_cfg(hmdb_root, split))
    tags = hmdb51_tags(split, HMDB_VIDEOS)
    assert index.classes == sorted(HMDB51_CLASSES)
    assert len(index.train) == tags.count(1) * len(HMDB51_CLASSES)
    assert len(index.test) == tags.count(2) * len(HMDB51_CLASSES)
    assert index.extra["unused"] == tags.count(0) * len(HMDB51_CLASSES)
    assert not {r.video_id for r in index.train} & {r.video_id for r in index.test}
    folder = "hmdb51_org" if (hmdb_root / "hmdb51_org").is_dir() else "videos"
    for tag, records in ((1, index.train), (2, index.test)):
        for record in records:
            top, cls, name = record.video_id.split("/")
            assert top == folder and record.label == index.classes.index(cls)
            assert record.path == str(hmdb_root / record.video_id) + ".avi" and Path(record.path).is_file()
            assert tags[int(name.rsplit("_", 1)[1])] == tag


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_hmdb51_agrees_with_torchvision(hmdb_root, split, train):
    import torch
    from torchvision.datasets import HMDB51
    from torchvision.datasets.folder import find_classes, make_dataset

    index = hmdb51.load(hmdb_cfg(hmdb_root, split))
    video_root = index.extra["video_dir"]
    _, class_to_idx = find_classes(video_root)
    paths = [p for p, _ in make_dataset(video_root, class_to_idx, ("avi",))]
    metadata = {
        "video_paths": paths,
        "video_pts": [torch.arange(FRAMES)] * len(paths),
        "video_fps": [25.0] * len(paths),
    }
    tv = HMDB51(
        video_root,
        index.extra["split_dir"],
        frames_per_clip=FRAMES,
        step_between_clips=FRAMES,
        fold=split,
        train=train,
        _precomputed_metadata=metadata,
    )
    theirs = {tv.samples[i][0]: tv.samples[i][1] for i in tv.indices}
    ours = {r.path: r.label for r in (index.train if train else index.test)}
    assert ours == theirs  # same videos and, classes being sorted in both, the same integer labels
    assert tv.classes == index.classes and len(tv) == len(ours)


def _hmdb_tree(tmp_path, **kwargs) -> Path:
    return make_hmdb51_tree(tmp_path / "hmdb51", videos=HMDB_VIDEOS, empty=True, **kwargs)


HMDB_ERRORS = {
    "root missing": (lambda r: _rm(r), ["does not exist", "hmdb51_org.rar", "test_train_splits.rar"]),
    "no videos folder": (lambda r: _rm(r / "videos"), ["neither videos/ nor hmdb51_org/", "unrar x"]),
    "per-class rars not unpacked": (
        lambda r: (_rm(r / "videos"), (r / "hmdb51_org").mkdir(), (r / "hmdb51_org/cartwheel.rar").touch()),
        ["per-class .rar archives", 'for f in *.rar; do unrar x "$f"; done'],
    ),
    "no splits folder": (
        lambda r: _rm(r / "splits"),
        ["neither splits/ nor testTrainMulti_7030_splits/", "test_train_splits.rar"],
    ),
    "no split files for the split": (
        lambda r: [p.unlink() for p in (r / "splits").glob("*_test_split1.txt")],
        ["no <class>_test_split1.txt files", "unrar x test_train_splits.rar"],
    ),
    "one class without split file": (
        lambda r: (r / "splits/cartwheel_test_split1.txt").unlink(),
        ["class folder", "cartwheel", "cartwheel_test_split1.txt", "test_train_splits.rar"],
    ),
    "bad tag": (
        lambda r: _edit(r / "splits/draw_sword_test_split1.txt", "_1.avi 1", "_1.avi 3"),
        ["draw_sword_test_split1.txt:2:", "tag 3 is not 0, 1 or 2"],
    ),
    "line without tag": (
        lambda r: _edit(r / "splits/brush_hair_test_split1.txt", "_0.avi 2", "_0.avi"),
        ["brush_hair_test_split1.txt:1:", "`<video>.avi <0|1|2>`"],
    ),
    "conflicting duplicate": (
        lambda r: _edit(r / "splits/brush_hair_test_split1.txt", "\n", "\nClip00_brush_hair_u_nm_np1_fr_goo_0.avi 1\n"),
        ["brush_hair_test_split1.txt:2:", "listed earlier with tag 2"],
    ),
    "split file unreadable": (
        lambda r: (_rm(r / "splits/cartwheel_test_split1.txt"), (r / "splits/cartwheel_test_split1.txt").mkdir()),
        ["cartwheel_test_split1.txt is not a file"],
    ),
    "path leaving the class folder": (
        lambda r: _edit(r / "splits/brush_hair_test_split1.txt", "Clip00_", "../cartwheel/Clip00_"),
        ["brush_hair_test_split1.txt:1:", "a path, not the name of a video in this class's folder"],
    ),
}


@pytest.mark.parametrize("case", list(HMDB_ERRORS))
def test_hmdb51_errors_say_what_and_how(tmp_path, case):
    edit, fragments = HMDB_ERRORS[case]
    root = _hmdb_tree(tmp_path)
    edit(root)
    expect_error(hmdb51.load, hmdb_cfg(root), *fragments)


def test_hmdb51_missing_videos_are_named_and_counted(tmp_path, caplog):
    root = _hmdb_tree(tmp_path)
    (root / "videos/cartwheel/Clip00_cartwheel_u_nm_np1_fr_goo_0.avi").unlink()  # test in split 1
    (root / "videos/cartwheel/Clip05_cartwheel_u_nm_np1_fr_goo_5.avi").unlink()  # unused in split 1: fine
    expect_error(hmdb51.load, hmdb_cfg(root), "1 video named", "cartwheel/Clip00_cartwheel", "allow_missing")
    with caplog.at_level(logging.WARNING):
        index = hmdb51.load(hmdb_cfg(root, allow_missing=True))
    assert "skipping 1 video" in caplog.text and len(index.test) == 2 * len(HMDB51_CLASSES) - 1


def test_hmdb51_video_in_no_split_is_reported_not_fatal(tmp_path, caplog):
    root = _hmdb_tree(tmp_path, official_names=True)
    (root / "hmdb51_org/catch").mkdir()
    (root / "hmdb51_org/draw_sword/extra_clip.avi").touch()
    with caplog.at_level(logging.WARNING):
        index = hmdb51.load(hmdb_cfg(root))  # an empty folder is no class; a stray file is reported
    assert "1 video(s)" in caplog.text and "draw_sword/extra_clip.avi" in caplog.text
    assert index.extra["unlisted"] == ["draw_sword/extra_clip.avi"]
    assert index.classes == sorted(HMDB51_CLASSES)


# ----------------------------------------------------------------------------- list files
@pytest.fixture
def list_root(tmp_path) -> Path:
    root = tmp_path / "mine"
    for rel in ("a/one.avi", "a/two words.mp4", "b/three.avi", "b/four.avi"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
    outside = tmp_path / "elsewhere" / "five.avi"
    outside.parent.mkdir()
    outside.touch()
    (root / "train1.txt").write_text(f"# comment\na/one.avi 0\r\na/two words.mp4 0\n\n{outside} 2\n")
    (root / "test1.txt").write_text("b/three.avi 1\nb/four.avi 2\n")
    return root


def list_cfg(root, **extra) -> dict:
    return {
        "name": "listfile",
        "root": str(root),
        "split": 1,
        "train_list": "train{split}.txt",
        "test_list": "test1.txt",
    } | extra


def test_listfile_index(list_root, tmp_path):
    index = listfile.load(list_cfg(list_root))
    assert index.classes == ["0", "1", "2"]
    assert [(r.video_id, r.label) for r in index.train] == [
        ("a/one", 0),
        ("a/two words", 0),
        ((tmp_path / "elsewhere" / "five").as_posix().lstrip("/"), 2),
    ]
    assert [(r.video_id, r.label) for r in index.test] == [("b/three", 1), ("b/four", 2)]
    assert index.test[0].path == str(list_root / "b/three.avi")


def test_listfile_classes_file(list_root):
    (list_root / "names.txt").write_text("walk\nrun\njump\n")
    assert listfile.load(list_cfg(list_root, classes="names.txt")).classes == ["walk", "run", "jump"]
    (list_root / "names.txt").write_text("walk\nrun\n")
    expect_error(listfile.load, list_cfg(list_root, classes="names.txt"), "train1.txt:5:", "a label in 0..1")


@pytest.mark.parametrize(
    "edit, override, fragments",
    [
        (lambda r: None, {"train_list": None}, ["dataset.train_list is not set"]),
        (lambda r: (r / "test1.txt").unlink(), {}, ["test1.txt is missing"]),
        (lambda r: (r / "test1.txt").write_text("b/three.avi x\n"), {}, ["test1.txt:1:", "label is not an int"]),
        (lambda r: (r / "test1.txt").write_text("b/three.avi\n"), {}, ["test1.txt:1:", "no label"]),
        (lambda r: (r / "test1.txt").write_text("b/three.avi -1\n"), {}, ["test1.txt:1:", "negative label"]),
        (lambda r: (r / "b/four.avi").unlink(), {}, ["1 video named", "b/four.avi", "allow_missing"]),
        (lambda r: (r / "test1.txt").write_text("a/one.avi 0\n"), {}, ["both train and test", "a/one"]),
        (lambda r: None, {"root": "/nonexistent/videos"}, ["dataset.root=/nonexistent/videos does not exist"]),
    ],
)
def test_listfile_errors(list_root, edit, override, fragments):
    edit(list_root)
    expect_error(listfile.load, list_cfg(list_root) | override, *fragments)


@pytest.mark.parametrize("label", ["12345678901234567890", "100000"])
@pytest.mark.parametrize("classes", [None, "names.txt"])
def test_listfile_label_beyond_the_classes_is_one_line_without_a_big_allocation(list_root, label, classes):
    """A 20-digit label once built the class names "0".."label" until the OOM killer ended it (22 GB)."""
    import resource
    import time

    (list_root / "names.txt").write_text("walk\nrun\njump\n")
    (list_root / "test1.txt").write_text(f"b/three.avi 1\nb/four.avi {label}\n")
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    msg = expect_error(listfile.load, list_cfg(list_root, classes=classes), "test1.txt:2:", f"label {label}")
    assert time.perf_counter() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: no class list was built
    assert ("a label in 0..2" if classes else f"below {listfile.MAX_CLASSES}") in msg


def test_listfile_labels_just_below_the_limit_are_classes(list_root):
    (list_root / "test1.txt").write_text(f"b/three.avi 1\nb/four.avi {listfile.MAX_CLASSES - 1}\n")
    assert len(listfile.load(list_cfg(list_root)).classes) == listfile.MAX_CLASSES


# ----------------------------------------------------------------------------- configs and dispatch
@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "listfile"])
def test_dataset_config_files_load(name, tmp_path, ucf_root, list_root):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.name == name and cfg.split == 1 and cfg.allow_missing is False
    roots = {"ucf101": ucf_root, "hmdb51": _hmdb_tree(tmp_path), "listfile": list_root}
    overrides = {"root": str(roots[name])}
    if name == "listfile":
        overrides.update(train_list="train{split}.txt", test_list="test1.txt")
    cfg = OmegaConf.merge(cfg, overrides)
    OmegaConf.set_struct(cfg, True)
    module = {"ucf101": ucf101, "hmdb51": hmdb51, "listfile": listfile}[name]
    index = module.load(cfg)
    assert index.name == name and index.train and index.test


def test_load_dataset_dispatches(ucf_root):
    pytest.importorskip("mvcoding.datasets.synthetic")
    from mvcoding.datasets import load_dataset

    index = load_dataset(ucf_cfg(ucf_root, 3))
    assert index.name == "ucf101" and index.split == 3


def test_listfile_list_paths_may_be_absolute_or_relative_to_the_working_directory(list_root, tmp_path, monkeypatch):
    (tmp_path / "lists").mkdir()
    (list_root / "test1.txt").rename(tmp_path / "lists" / "test1.txt")
    monkeypatch.chdir(tmp_path)
    cfg = list_cfg(list_root, train_list=str(list_root / "train1.txt"), test_list="lists/test1.txt")
    index = listfile.load(cfg)
    assert len(index.train) == 3 and [r.video_id for r in index.test] == ["b/three", "b/four"]
    assert index.extra["test_list"] == str(tmp_path / "lists" / "test1.txt")


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_listfile_files_differing_only_in_extension_are_two_videos(list_root, caplog):
    for rel in ("a/one.mp4", "b/three.mkv"):
        (list_root / rel).touch()
    _append(list_root / "train1.txt", "a/one.mp4 1\n")
    _append(list_root / "test1.txt", "b/three.mkv 1\n")
    with caplog.at_level(logging.WARNING):
        index = listfile.load(list_cfg(list_root))
    assert [(r.video_id, r.path, r.label) for r in index.train[:2] + index.train[3:]] == [
        ("a/one.avi", str(list_root / "a/one.avi"), 0),
        ("a/two words", str(list_root / "a/two words.mp4"), 0),  # no twin: the id has no extension
        ("a/one.mp4", str(list_root / "a/one.mp4"), 1),
    ]
    assert [r.video_id for r in index.test] == ["b/three.avi", "b/four", "b/three.mkv"]
    assert "4 listed files share their path without the extension" in caplog.text
    assert "a/one.avi, a/one.mp4" in caplog.text
    # the same file named twice (another spelling of its path) stays one video
    _append(list_root / "train1.txt", "a/../a/one.mp4 1\n")
    assert [r.video_id for r in listfile.load(list_cfg(list_root)).train].count("a/one.mp4") == 1


def test_listfile_ids_that_collide_even_with_extensions_name_both_lines(list_root, tmp_path):
    """train1.txt:5 lists <tmp>/elsewhere/five.avi by its absolute path; its id is that path without the
    leading slash, which is also the id of the same relative path under the root."""
    outside = tmp_path / "elsewhere" / "five.avi"
    inside = list_root / str(outside).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.touch()
    _append(list_root / "test1.txt", f"{str(outside).lstrip('/')} 1\n")
    expect_error(listfile.load, list_cfg(list_root), "train1.txt:5:", "is also the id of", "test1.txt:3")


def test_listfile_path_leaving_the_root_is_named_in_a_warning(list_root, tmp_path, caplog):
    (tmp_path / "elsewhere" / "six.avi").touch()
    _append(list_root / "test1.txt", "b/../a/../b/four.avi 2\n../elsewhere/six.avi 1\n../mine/../elsewhere/six.avi 1\n")
    with caplog.at_level(logging.WARNING):
        index = listfile.load(list_cfg(list_root))
    leaving = [r.getMessage() for r in caplog.records if "leaves dataset.root" in r.getMessage()]
    assert len(leaving) == 1, leaving  # one warning per file: the first line and how many more
    assert leaving[0].startswith(f"{list_root / 'test1.txt'}:4: path '../elsewhere/six.avi' leaves dataset.root=")
    assert "(and 1 more line of this file)" in leaving[0]
    assert index.test[-1].path == str(tmp_path / "elsewhere" / "six.avi")
    # a path staying inside through `..` and an absolute path (train1.txt:5) are not warned about
    caplog.clear()
    (list_root / "test1.txt").write_text("b/three.avi 1\nb/../b/four.avi 2\n")
    with caplog.at_level(logging.WARNING):
        listfile.load(list_cfg(list_root))
    assert "leaves dataset.root" not in caplog.text
