"""Decode-once RGB: the rgb cache (raw and JPEG) against decord, one cache for rgb, lab_l and lab_ab, one
decode per item for views of the same frames, and training that never opens a video file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.data import MultiViewClips, video_lengths
from mvcoding.datasets import load_dataset
from mvcoding.model import build_views
from mvcoding.precompute import main as precompute
from mvcoding.registry import Clip, model_input
from mvcoding.train import train
from mvcoding.video import read_frames


@pytest.fixture
def root(synthetic_root, tmp_path):
    out = tmp_path / "synthetic"
    shutil.copytree(synthetic_root, out, ignore=shutil.ignore_patterns("cache"))
    return out


def cfg_with(root, **views):
    over = tiny(root) + [f"views.{n}={s}" for n, s in views.items()]
    return load_config(SYNTHETIC, over), over


@pytest.mark.parametrize("fmt, tolerance", [("raw", 0), ("jpeg", 4.0)])
def test_cached_frames_match_decord(root, fmt, tolerance):
    cfg, over = cfg_with(root, rgb=f"{{cache: true, cache_format: {fmt}}}")
    assert precompute(["rgb", SYNTHETIC, *over]) == 0
    view = build_views(cfg, ["rgb"])["rgb"]
    records = load_dataset(cfg.dataset).records("all")
    view.check(records)
    r = records[5]
    x = view.decode(Clip(r.video_id, r.path, 1, 4, 3, 25.0, 12))  # frames 1, 4, 7, 10
    ref = torch.from_numpy(read_frames(r.path, [1, 4, 7, 10])).permute(3, 0, 1, 2)  # (3, T, H, W)
    assert x.dtype == torch.uint8 and x.shape == ref.shape
    err = (x.float() - ref.float()).abs().mean().item()
    assert err <= tolerance, err  # raw: the very bytes decord gives; JPEG: within a few grey levels
    if fmt == "jpeg":
        stored = view.cache.read(r.video_id, 0, 12)
        assert stored.shape[1:3] == (1, 1) and stored.nbytes < 0.5 * ref.numel() / 4 * 12  # smaller than raw


def test_rgb_lab_l_and_lab_ab_share_one_cache_filled_once(root, capsys):
    cfg, over = cfg_with(root, rgb="{cache: true}", lab_l="{cache: true}", lab_ab="{cache: true}")
    views = build_views(cfg, ["rgb", "lab_l", "lab_ab"])
    assert len({v.cache.path for v in views.values()}) == 1 and len({v.source for v in views.values()}) == 1
    assert precompute(["all", SYNTHETIC, *over]) == 0
    out = capsys.readouterr().out  # the config's flow cache and one rgb cache, not three
    assert "48 entries computed" in out and out.count("rgb-jpeg-") == 1 and out.count("flow-dis-") == 1
    for v in views.values():
        v.check(load_dataset(cfg.dataset).records("all"))


@pytest.mark.parametrize("cached", [False, True])
def test_views_of_the_same_frames_decode_once_per_item(root, cached, monkeypatch):
    setting = "{cache: true}" if cached else "{}"
    cfg, over = cfg_with(root, rgb=setting, lab_l=setting, lab_ab=setting)
    if cached:
        assert precompute(["rgb", SYNTHETIC, *over]) == 0
    views = build_views(cfg, ["rgb", "lab_l", "lab_ab"])
    records = load_dataset(cfg.dataset).records("train")
    data = MultiViewClips(records, views, video_lengths(records, cfg), frames=4, stride=1, train=True)
    calls = []
    for v in views.values():  # count what reaches the decoder
        inner = v.decode
        v.decode = lambda clip, inner=inner: calls.append(clip.video_id) or inner(clip)
    item = data[3]
    assert len(calls) == 1 and set(item) >= {"rgb", "lab_l", "lab_ab"}
    assert item["rgb"].shape == item["lab_ab"].shape == (3, 4, 32, 32)  # uint8 crops; Lab on the device
    assert model_input(views["lab_ab"], item["lab_ab"]).shape == (2, 4, 32, 32)


def test_training_from_the_rgb_and_flow_caches_opens_no_video(root, tmp_path, monkeypatch):
    cfg, over = cfg_with(root, rgb="{cache: true}")
    assert precompute(["all", SYNTHETIC, *over]) == 0
    video_lengths(load_dataset(cfg.dataset).records("all"), cfg)  # lengths are read once, with the cache

    import decord

    def refuse(*args, **kwargs):
        raise AssertionError(f"training opened a video file: {args[:1]}")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    run = train(load_config(SYNTHETIC, over + [f"run.dir={tmp_path / 'run'}", "train.max_steps=2"]))
    assert (run / "checkpoints" / "last.pt").is_file()


def test_raw_and_video_decoding_give_the_same_training_items(root):
    cfg, over = cfg_with(root, rgb="{cache: true, cache_format: raw}")
    assert precompute(["rgb", SYNTHETIC, *over]) == 0
    records = load_dataset(cfg.dataset).records("train")
    lengths = video_lengths(records, cfg)
    cached = MultiViewClips(records, build_views(cfg, ["rgb"]), lengths, frames=4, stride=2, train=True, seed=1)
    video_cfg, _ = cfg_with(root, rgb="{}")
    video = MultiViewClips(records, build_views(video_cfg, ["rgb"]), lengths, frames=4, stride=2, train=True, seed=1)
    for i in (0, 7, 13):
        np.testing.assert_array_equal(cached[i]["rgb"].numpy(), video[i]["rgb"].numpy())
