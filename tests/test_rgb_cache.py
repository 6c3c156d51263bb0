"""Decode-once RGB: the rgb cache (raw and JPEG) against decord, one cache for rgb, lab_l and lab_ab, one
decode per item for views of the same frames, and training that never opens a video file."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import SYNTHETIC, tiny
from mvcoding.config import load_config
from mvcoding.data import MultiViewClips, collate, lengths_file, video_lengths
from mvcoding.datasets import load_dataset
from mvcoding.model import build_views
from mvcoding.precompute import main as precompute
from mvcoding.registry import Clip, model_input
from mvcoding.train import train
from mvcoding.video import read_frames, video_info


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
    # the stage's filter: raw frames uncompressed (lzf reads them 5-6x slower for 9-16% of the disk), JPEG
    # rows under lzf (their zero padding); both checksummed
    for part in view.cache.path.glob("part-*.h5"):
        with h5py.File(part, "r", locking=False) as f:  # the view's reader holds it open
            filters = {(f[v].compression, f[v].fletcher32) for v in json.loads(f.attrs["videos"])}
            assert filters == {(None if fmt == "raw" else "lzf", True)}


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
    assert not lengths_file(cfg).exists()  # the lengths come from the rgb cache's entries

    import decord

    def refuse(*args, **kwargs):
        raise AssertionError(f"training opened a video file: {args[:1]}")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    run = train(load_config(SYNTHETIC, over + [f"run.dir={tmp_path / 'run'}", "train.max_steps=2"]))
    assert (run / "checkpoints" / "last.pt").is_file()


def test_lengths_come_from_the_rgb_cache_entries_not_the_videos(root, monkeypatch):
    import decord

    cfg, over = cfg_with(root, rgb="{cache: true, cache_format: raw}")
    assert precompute(["rgb", SYNTHETIC, *over]) == 0
    records = load_dataset(cfg.dataset).records("all")
    truth = {r.video_id: video_info(r.path)[:2] for r in records}
    assert not lengths_file(cfg).exists()
    opened = []
    real = decord.VideoReader
    monkeypatch.setattr(decord, "VideoReader", lambda path, *a, **k: opened.append(path) or real(path, *a, **k))
    assert video_lengths(records, cfg) == truth and opened == []
    assert lengths_file(cfg).is_file()  # kept beside the caches for the next run
    train = load_dataset(cfg.dataset).records("train")
    data = MultiViewClips(train, build_views(cfg, ["rgb"]), video_lengths(train, cfg), frames=4, stride=2, train=True)
    batch = collate([data[i] for i in range(4)])
    assert batch["rgb"].shape == (4, 3, 4, 32, 32) and opened == []  # a batch, and still no video opened
    # a video changed since the cache was filled: its length is read from it (the cache's entry is not its)
    lengths_file(cfg).unlink()
    changed = records[2]
    os.utime(changed.path, ns=(os.stat(changed.path).st_atime_ns, os.stat(changed.path).st_mtime_ns + 10**9))
    assert video_lengths(records, cfg) == truth and set(opened) == {changed.path}


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


def test_jpeg_decode_on_the_device_gives_the_workers_items(root):
    """jpeg_decode=device (here on the CPU, the same code a GPU runs with nvJPEG): workers hand over the
    undecoded rows and the crop; the batched decode on the device must give exactly the model input the
    workers' decode gives, for training crops and flips and for the eval crops, through a real DataLoader
    whose items have JPEG rows of different lengths."""
    from mvcoding.data import EpochSampler, make_loader
    from mvcoding.eval.features import EvalClips
    from mvcoding.registry import to_model

    setting = "{cache: true, resolution: [24, 32], jpeg_decode: %s}"  # frames wider than high: 3 distinct eval crops
    cfg, over = cfg_with(root, rgb=setting % "workers", lab_ab=setting % "workers")
    assert precompute(["rgb", SYNTHETIC, *over]) == 0
    dev_cfg, _ = cfg_with(root, rgb=setting % "device", lab_ab=setting % "device")
    records = load_dataset(cfg.dataset).records("train")
    lengths = video_lengths(records, cfg)
    workers, device = build_views(cfg, ["rgb", "lab_ab"]), build_views(dev_cfg, ["rgb", "lab_ab"])
    assert device["rgb"].cache.path == workers["rgb"].cache.path  # one cache, two places to decode it

    def batches(views, dataset_kind):
        if dataset_kind == "train":
            data = MultiViewClips(records, views, lengths, frames=4, stride=2, train=True, seed=3)
            sampler = EpochSampler(len(data), seed=3, shuffle=True, batch_size=6)
        else:
            data = EvalClips(records[:6], views, lengths, frames=4, stride=2, clips=2, crops=3)
            sampler = EpochSampler(len(data), seed=0, shuffle=False, batch_size=6)
        loader = make_loader(data, sampler, batch_size=6, workers=1, prefetch=2, pin_memory=False, drop_last=True)
        return list(loader)

    for kind in ("train", "eval"):
        got, want = batches(device, kind), batches(workers, kind)
        rows = got[0]["rgb"]["host_jpeg"]  # (B, [K,] T, L): padded to the longest row of the batch
        assert rows.dtype == torch.uint8 and rows.shape[-2] == 4
        lengths_in_batch = (rows[..., :4].long() * torch.tensor([1, 256, 65536, 16777216])).sum(-1)
        assert len(set(lengths_in_batch.flatten().tolist())) > 1  # rows of different lengths were collated
        flips = 0
        for g, w in zip(got, want, strict=True):
            flips += int(g["rgb"]["host_aug"][..., 4].sum())
            for name in ("rgb", "lab_ab"):
                a, b = to_model(device[name], g[name], "cpu"), to_model(workers[name], w[name], "cpu")
                assert a.shape == b.shape and a.dtype == torch.float32
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert kind == "eval" or flips > 0  # the training batches did carry flips to the device


def test_jpeg_decode_settings_fail_in_one_line(root):
    from mvcoding.errors import UserError
    from mvcoding.registry import ViewContext
    from mvcoding.views.rgb import jpeg_on_device

    with pytest.raises(UserError, match=r"views.rgb.jpeg_decode=device .* needs views.rgb.cache=true"):
        build_views(cfg_with(root, rgb="{jpeg_decode: device}")[0], ["rgb"])
    with pytest.raises(UserError, match=r"cache=true and cache_format=jpeg"):
        build_views(cfg_with(root, lab_l="{cache: true, cache_format: raw, jpeg_decode: device}")[0], ["lab_l"])
    with pytest.raises(UserError, match=r"views.rgb.jpeg_decode='gpu' is not valid: one of: auto, workers, device"):
        build_views(cfg_with(root, rgb="{cache: true, jpeg_decode: gpu}")[0], ["rgb"])
    # auto: on the device exactly when the run's device is a GPU and the cache is JPEG
    ctx = {"dataset": "d", "root": "/r", "cache_dir": "/c", "frames": 4, "stride": 1, "size": 32}
    for device, cache, fmt, expected in [("cuda", True, "jpeg", True), ("cuda:1", True, "jpeg", True),
                                         ("cpu", True, "jpeg", False), ("cuda", True, "raw", False),
                                         ("cuda", False, "jpeg", False)]:  # fmt: skip
        got = jpeg_on_device(ViewContext(**ctx, device=device), jpeg_decode="auto", cache=cache, cache_format=fmt,
                               view="rgb")  # fmt: skip
        assert got is expected, (device, cache, fmt)


def test_a_damaged_jpeg_frame_is_one_line_on_the_device_path(root):
    from mvcoding.errors import UserError
    from mvcoding.views.rgb import decode_frames

    rows = torch.zeros(2, 40, dtype=torch.uint8)
    rows[:, 0] = 30  # a length of 30 bytes, all zeros: not a JPEG
    with pytest.raises(UserError, match=r"a JPEG frame of the rgb cache cannot be decoded .*mvcoding precompute rgb"):
        decode_frames(rows)
