"""`mvcoding extract`: per-video and per-clip features of the checkpoint's encoders, with an index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_transfer import Tiny

from conftest import SYNTHETIC, tiny
from mvcoding import load_encoder
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.datasets import load_dataset
from mvcoding.eval.features import EvalClips, prepare
from mvcoding.train import train


@pytest.fixture(scope="module")
def checkpoint(synthetic_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("extract") / "run"
    train(load_config(SYNTHETIC, tiny(synthetic_root, **{"run.dir": run, "train.max_steps": 2})))
    return run / "checkpoints" / "last.pt"


def test_features_are_the_encoder_on_each_clip_averaged(synthetic_root, checkpoint, tmp_path):
    out = tmp_path / "f.pt"
    over = tiny(synthetic_root, **{"checkpoint": checkpoint, "eval.clips": 2, "eval.crops": 1})
    assert main(["extract", SYNTHETIC, *over, "split=test", f"out={out}"]) == 0
    got = torch.load(out, weights_only=True)
    cfg = load_config(SYNTHETIC, over)
    test = load_dataset(cfg.dataset).records("test")
    assert [e["video_id"] for e in got["index"]] == [r.video_id for r in test]
    assert all(e["split"] == "test" and e["label"] == r.label for e, r in zip(got["index"], test, strict=True))
    assert got["video"].shape == (len(test), got["clip"].shape[-1]) and got["clip"].shape[:2] == (len(test), 2)
    # by hand: the checkpoint's rgb encoder on each eval clip, then the mean of the two clips
    s = prepare(cfg, checkpoint, random_init=False)
    clips = EvalClips(test, s.views, s.lengths, frames=4, stride=1, clips=2, crops=1)
    encoder = s.encoders["rgb"].eval()
    with torch.no_grad():
        for v in (0, 5):
            per_clip = [encoder(s.views["rgb"].device_transform(clips[2 * v + c]["rgb"]))[0] for c in (0, 1)]
            torch.testing.assert_close(got["clip"][v, 1], per_clip[1], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got["video"][v], (per_clip[0] + per_clip[1]) / 2, rtol=1e-4, atol=1e-5)
    index = json.loads(out.with_suffix(".json").read_text())["index"]
    assert index == got["index"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """test_transfer's tiny list-file dataset (56 x 32 frames: its 3 crops differ) and rgb checkpoint."""
    return Tiny(tmp_path_factory.mktemp("extract_wide"))


def test_npy_output_and_all_splits(wide, tmp_path):
    """The .npy rows are the checkpoint's rgb encoder (loaded with the public mvcoding.load_encoder) on
    each clip's 3 crops, averaged over the crops (clip rows) and then over the 2 clips (video rows), in
    the index's order: train videos, then test videos."""
    out = tmp_path / "f.npy"
    over = [f"checkpoint={wide.checkpoint}", "eval.clips=2", "eval.crops=3"]
    assert main(["extract", str(wide.config), *over, f"out={out}"]) == 0
    video, clips = np.load(out), np.load(out.with_suffix(".clips.npy"))
    index = json.loads(out.with_suffix(".json").read_text())["index"]
    assert video.shape[0] == len(index) == 18 and clips.shape[:2] == (18, 2) and video.shape[1] == clips.shape[2]
    assert [e["split"] for e in index] == ["train"] * 12 + ["test"] * 6
    s = prepare(wide.cfg(**{"eval.crops": 3}), wide.checkpoint, random_init=False)  # the eval clips (data only)
    records = s.index.train + s.index.test
    assert [e["video_id"] for e in index] == [r.video_id for r in records]
    encoder = load_encoder(wide.checkpoint, "rgb").eval()
    data = EvalClips(records, s.views, s.lengths, frames=4, stride=2, clips=2, crops=3)
    with torch.no_grad():
        for v in (0, 12, 17):  # the first train video, the first and the last test video
            per_clip, first = [], []
            for c in (0, 1):
                x = s.views["rgb"].device_transform(data[2 * v + c]["rgb"])  # (3 crops, C, T, H, W)
                assert x.shape[0] == 3 and not torch.allclose(x[0], x[2])  # the crops differ
                per_clip.append(encoder(x).mean(0))  # the mean over the 3 crops
                first.append(encoder(x)[0])
            np.testing.assert_allclose(clips[v], torch.stack(per_clip).numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(video[v], ((per_clip[0] + per_clip[1]) / 2).numpy(), rtol=1e-4, atol=1e-5)
            assert not np.allclose(clips[v], torch.stack(first).numpy(), atol=1e-4)  # not the first crop alone


@pytest.mark.parametrize("where", ["under a file", "a folder", "json beside is a folder", "read-only"])
def test_an_output_that_cannot_be_written_is_one_line_before_any_feature(synthetic_root, checkpoint, tmp_path,
                                                                         capsys, monkeypatch, where):  # fmt: skip
    import errno

    from mvcoding import extract
    from mvcoding.eval import features

    def no_work(*args, **kwargs):
        raise AssertionError("features were computed before the output was checked")

    monkeypatch.setattr(features, "prepare", no_work)
    (tmp_path / "file").write_text("x")
    out = {"under a file": tmp_path / "file" / "sub" / "f.pt", "a folder": tmp_path / "d.pt",
           "json beside is a folder": tmp_path / "g.npy", "read-only": tmp_path / "new" / "f.pt"}[where]  # fmt: skip
    if where == "a folder":
        out.mkdir()
    if where == "json beside is a folder":
        out.with_suffix(".json").mkdir()
    if where == "read-only":  # what a read-only mount answers (root passes permission checks: simulated)
        (tmp_path / "new").mkdir()

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(extract.tempfile, "mkstemp", read_only)
    over = tiny(synthetic_root, **{"checkpoint": checkpoint})
    assert main(["extract", SYNTHETIC, *over, f"out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    expected = {"under a file": f"{tmp_path / 'file'} is a file, not a folder", "a folder": f"{out} is a folder",
                "json beside is a folder": f"{out.with_suffix('.json')} is a folder",
                "read-only": "Read-only file system"}[where]  # fmt: skip
    assert err.startswith("error: out=") and "\n" not in err and expected in err, err
    assert not any(".probe" in p.name for p in tmp_path.rglob("*"))  # nothing left behind


def test_bad_arguments_are_one_line(synthetic_root, checkpoint, tmp_path, capsys):
    base = tiny(synthetic_root, **{"checkpoint": checkpoint})
    assert main(["extract", SYNTHETIC, *base, "split=val"]) == 2
    assert "split='val' is not valid: one of: train, test, all" in capsys.readouterr().err
    assert main(["extract", SYNTHETIC, *base, f"out={tmp_path / 'f.csv'}"]) == 2
    assert "a .pt or .npy file" in capsys.readouterr().err
    assert main(["extract", SYNTHETIC, *tiny(synthetic_root)]) == 2
    assert "needs checkpoint=PATH" in capsys.readouterr().err
