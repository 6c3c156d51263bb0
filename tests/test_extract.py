"""`mvcoding extract`: per-video and per-clip features of the checkpoint's encoders, with an index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import SYNTHETIC, tiny
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


def test_npy_output_and_all_splits(synthetic_root, checkpoint, tmp_path):
    out = tmp_path / "f.npy"
    over = tiny(synthetic_root, **{"checkpoint": checkpoint, "eval.clips": 1})
    assert main(["extract", SYNTHETIC, *over, f"out={out}"]) == 0
    video, clips = np.load(out), np.load(out.with_suffix(".clips.npy"))
    index = json.loads(out.with_suffix(".json").read_text())["index"]
    assert video.shape[0] == len(index) == 24 and clips.shape[:2] == (24, 1)
    assert {e["split"] for e in index} == {"train", "test"}


def test_bad_arguments_are_one_line(synthetic_root, checkpoint, tmp_path, capsys):
    base = tiny(synthetic_root, **{"checkpoint": checkpoint})
    assert main(["extract", SYNTHETIC, *base, "split=val"]) == 2
    assert "split='val' is not valid: one of: train, test, all" in capsys.readouterr().err
    assert main(["extract", SYNTHETIC, *base, f"out={tmp_path / 'f.csv'}"]) == 2
    assert "a .pt or .npy file" in capsys.readouterr().err
    assert main(["extract", SYNTHETIC, *tiny(synthetic_root)]) == 2
    assert "needs checkpoint=PATH" in capsys.readouterr().err
