"""Retrieval on hand-built features: the mean over crops, then over clips, and the clip-level recall,
each against numbers worked out by hand (a first-crop or a video-level shortcut gives other numbers)."""

from __future__ import annotations

import importlib
import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from mvcoding.datasets import VideoRecord

eval_retrieval = importlib.import_module(
    "mvcoding.eval.retrieval"
)  # the module (mvcoding.eval.retrieval is the function)

# 2 test videos (labels 0, 1) x 2 clips x 2 crops, features of width 2; rows are clips, video-major
TEST = [
    [[0.0, 1.0], [3.0, 0.0]],  # video 0 clip 0: crop 0 alone points at class 1; the crops' mean (1.5, 0.5) at class 0
    [[0.2, 1.0], [0.2, 1.0]],  # video 0 clip 1: (0.2, 1), nearest the class-1 clips
    [[1.0, 0.2], [-1.0, 2.0]],  # video 1 clip 0: crop 0 alone points at class 0; the mean (0, 1.1) at class 1
    [[0.3, 1.0], [0.3, 1.0]],  # video 1 clip 1: (0.3, 1), nearest the class-1 clips
]
# 2 train videos (labels 0, 1) x 2 clips; the crops' means a0 (1, 0), a1 (1, 0.1), b0 (0, 1), b1 (0.1, 1)
TRAIN = [[[1.0, 0.0]] * 2, [[1.0, 0.1]] * 2, [[2.0, 1.0], [-2.0, 1.0]], [[0.1, 1.0]] * 2]  # b0's crop 0 looks like a


def setup(tmp_path) -> SimpleNamespace:
    cfg = OmegaConf.create({"eval": {"clips": 2, "train_clips": 2, "crops": 2, "retrieval": {"ks": [1, 2, 3]}},
                            "data": {"frames": 4, "stride": 1, "size": 32}})  # fmt: skip
    records = {s: [VideoRecord(f"{s}/v{i}", str(tmp_path / f"{s}{i}.avi"), i) for i in range(2)] for s in ("tr", "te")}
    index = SimpleNamespace(name="toy", split=1, classes=["a", "b"], train=records["tr"], test=records["te"])
    return SimpleNamespace(cfg=cfg, index=index, checkpoint=None, sha256=None, dataset=None, lengths={})


def test_retrieval_averages_the_crops_then_the_clips_and_reports_both_levels_by_hand(tmp_path, monkeypatch):
    """By cosine similarity (the gallery: train clips, each the mean of its crops, a0 (1, 0), a1 (1, 0.1),
    b0 (0, 1), b1 (0.1, 1)):

    clip level, each test clip the mean of its 2 crops:
      v0c0 (1.5, 0.5): nearest a1, a hit at rank 1;  v0c1 (0.2, 1): b0, b1, then a: first hit at rank 3;
      v1c0 (0, 1.1): nearest b0, a hit;              v1c1 (0.3, 1): nearest b1, a hit
      -> clip_recall@1 = 3/4, @2 = 3/4, @3 = 4/4
    video level, each video the mean of its clips: v0 (0.85, 0.75), v1 (0.15, 1.05); gallery a (1, 0.05),
      b (0.05, 1): v0 is nearer a (0.8875 against 0.7925 before norms, a and b have the same norm), v1 b
      -> recall@1 = 2/2 (and @2, @3: the whole gallery of 2 videos)
    The first crop instead of the mean gives v0 (0.1, 1) -> b and v1 (0.65, 0.6) -> a: recall@1 = 0 (and
    b0's first crop (2, 1) would be v0c0's nearest clip).
    """
    monkeypatch.setattr(eval_retrieval, "plot_retrieval", lambda *args, **kwargs: None)
    video = torch.tensor([0, 0, 1, 1])
    feats = {
        "test": {"x": torch.tensor(TEST), "label": torch.tensor([0, 0, 1, 1]), "video": video, "dims": {"rgb": 2}},
        "train": {"x": torch.tensor(TRAIN), "label": torch.tensor([0, 0, 1, 1]), "video": video, "dims": {"rgb": 2}},
    }
    record = eval_retrieval.retrieve_entry(setup(tmp_path), feats, "rgb", ("rgb",), folder=tmp_path)
    expected = {
        "recall@1": 1.0, "recall@2": 1.0, "recall@3": 1.0, "video_top1": 1.0,
        "clip_recall@1": 0.75, "clip_recall@2": 0.75, "clip_recall@3": 1.0, "clip_top1": 0.75,
    }  # fmt: skip
    assert record["metrics"] == pytest.approx(expected, abs=1e-6)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"] == expected
    assert all(results["level"][k].startswith("clip") == k.startswith("clip") for k in expected)
