"""Contract tests over every registered view (plugins included), view-specific behaviour, and short
runs of the four-view config (rgb, flow, depth, audio) on the tiny synthetic dataset."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import tiny
from mvcoding.cache import quantize
from mvcoding.config import CONFIG_DIR, load_config
from mvcoding.datasets import load_dataset
from mvcoding.errors import UserError
from mvcoding.model import view_context
from mvcoding.registry import Aug, Clip, ViewContext, build_view, list_views, model_input, view_settings, view_source
from mvcoding.train import train

FOUR = str(CONFIG_DIR / "synthetic_4view.yaml")
TRAIN_AUG = Aug(train=True, crop=(0.1, 0.2, 0.7, 0.6), flip=True)
EVAL_AUG = Aug(train=False, crop=None, flip=False)  # what sample_aug gives in eval: the centre square


@pytest.fixture(scope="session")
def four_root(synthetic_root):
    """The tiny synthetic dataset with its flow and depth caches filled (the same overrides as training)."""
    from mvcoding.precompute import main as precompute

    assert precompute(["depth", FOUR, *tiny(synthetic_root)]) == 0
    return synthetic_root


@pytest.fixture(scope="module")
def setup(four_root):
    """(ViewContext, train records, one real clip of 4 frames) on the tiny dataset."""
    from mvcoding.data import video_lengths

    cfg = load_config(FOUR, tiny(four_root))
    records = load_dataset(cfg.dataset).records("train")
    lengths = video_lengths(records, cfg)
    r = records[1]
    n, fps = lengths[r.video_id]
    return view_context(cfg), records, Clip(r.video_id, r.path, 3, cfg.data.frames, cfg.data.stride, fps, n)


def small(name: str) -> dict:
    """Small settings for a view: a narrow small3d where the view takes one."""
    accepted = view_settings(name)
    return {"width": 8} if "width" in accepted else {}


@pytest.mark.parametrize("name", list_views())
def test_view_contract(name, setup):
    ctx, records, clip = setup
    view = build_view(name, ctx, **small(name))
    assert view.name == name
    if view.check is not None:
        view.check(records)
    x = view.decode(clip)
    assert isinstance(x, torch.Tensor)
    items = [model_input(view, view.transform(x, aug)) for aug in (TRAIN_AUG, EVAL_AUG, Aug(train=True))]
    for y in items:
        assert y.shape == items[0].shape and y.shape[0] == view.channels, (y.shape, view.channels)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()
        assert y.std() > 0  # a real clip is not constant

    torch.manual_seed(0)
    encoder = view.build_encoder()
    z = encoder(torch.stack(items))
    assert z.shape == (3, encoder.feat_dim) and torch.isfinite(z).all()
    (z * torch.randn_like(z)).sum().backward()
    for pname, p in encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}.{pname}"


def test_flow_flip_negates_x(setup):
    ctx, _, clip = setup
    view = build_view("flow", ctx)
    x = view.decode(clip)
    plain = model_input(view, view.transform(x, Aug(train=True, crop=(0.0, 0.0, 1.0, 1.0), flip=False)))
    flipped = model_input(view, view.transform(x, Aug(train=True, crop=(0.0, 0.0, 1.0, 1.0), flip=True)))
    assert plain[0].abs().max() > 0  # the clip moves
    torch.testing.assert_close(flipped[0], -plain[0].flip(-1))
    torch.testing.assert_close(flipped[1], plain[1].flip(-1))


def test_lab_of_a_grey_clip_has_no_colour():
    ctx = ViewContext(dataset="synthetic", root="/none", cache_dir="/none", frames=2, stride=1, size=8)
    levels = torch.tensor([0, 64, 128, 255], dtype=torch.uint8)
    grey = levels.view(1, 1, 1, 4).expand(3, 2, 8, 4).repeat(1, 1, 1, 2)  # (3, T, H, W), R = G = B
    ab, lightness = (
        model_input(v, v.transform(grey, EVAL_AUG)) for v in (build_view(n, ctx) for n in ("lab_ab", "lab_l"))
    )
    assert ab.shape == (2, 2, 8, 8) and ab.abs().max() < 1e-3
    assert lightness[0, 0, 0, 0] == pytest.approx(-1.0, abs=1e-3)  # black: L = 0
    assert lightness[0, 0, 0, 3] == pytest.approx(1.0, abs=1e-3)  # white: L = 100
    assert (lightness[0, :, :, :4].diff(dim=-1) > 0).all()  # L rises with the grey level


def test_shared_crop_keeps_views_aligned_across_resolutions():
    """A square at the same place in an RGB clip (64 px) and in its flow and depth (32 px) stays at
    the same place after every view applies the same fractional crop and flip."""
    ctx = ViewContext(dataset="synthetic", root="/none", cache_dir="/none", frames=2, stride=1, size=16)
    views = {n: build_view(n, ctx) for n in ("rgb", "flow", "depth")}

    def with_square(channels: int, side: int, inside: float, outside: float) -> torch.Tensor:
        x = torch.full((channels, 2, side, side), outside)
        y0, y1, x0, x1 = (int(f * side) for f in (0.3125, 0.5, 0.3125, 0.4375))  # off-centre: a flip moves it
        x[:, :, y0:y1, x0:x1] = inside
        return x

    rgb = with_square(3, 64, 255, 0).to(torch.uint8)
    flow = torch.from_numpy(quantize(with_square(2, 32, 8.0, 0.0).numpy(), 20.0))
    depth = with_square(1, 32, 200, 100).to(torch.uint8)
    crop = (0.25, 0.25, 0.5, 0.5)
    for aug in (Aug(train=True, crop=crop, flip=False), Aug(train=True, crop=crop, flip=True), EVAL_AUG):
        masks = {}
        for name, x in (("rgb", rgb), ("flow", flow), ("depth", depth)):
            y = model_input(views[name], views[name].transform(x, aug))[0, 0]  # first channel and frame: (16, 16)
            y = (y - y[0, 0]).abs()  # off the background (a flip negates flow x)
            masks[name] = y > y.max() / 2
        assert masks["rgb"].sum() > 4
        assert torch.equal(masks["rgb"], masks["flow"]) and torch.equal(masks["rgb"], masks["depth"]), aug


def test_depth_view_reads_the_cache_the_tool_filled(setup):
    ctx, _, clip = setup
    view = build_view("depth", ctx)
    x = view.decode(clip)
    assert x.shape == (1, clip.num_frames, 32, 32) and x.dtype == torch.uint8
    assert x.min() >= 1  # the synthetic ground truth is valid everywhere
    y = view.transform(x, Aug(train=True, crop=(0.0, 0.0, 1.0, 1.0)))
    assert torch.equal(y, x)  # the workers hand the bytes over
    torch.testing.assert_close(model_input(view, y), x.float() / 255)  # 1..255 -> (0, 1], 0 (invalid) -> 0


def test_depth_view_without_its_cache_names_the_fill_command(setup, tmp_path):
    ctx, records, _ = setup
    view = build_view("depth", replace(ctx, cache_dir=str(tmp_path)))
    with pytest.raises(UserError, match=r"depth cache .* lacks .*mvcoding precompute depth CONFIG"):
        view.check(records)
    with pytest.raises(UserError, match=r"depth.*resolution=\[16\]"):
        build_view("depth", ctx, resolution=[16])


def pairs_logged(run) -> set[frozenset]:
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 2 and np.isfinite(last["loss"])
    return {frozenset(k[5:].split("-")) for k in last if k.startswith("loss/")}


def test_four_views_train_on_the_full_graph(four_root, tmp_path):
    cfg = load_config(FOUR, tiny(four_root, **{"run.dir": tmp_path / "full", "train.max_steps": 2}))
    assert list(cfg.views) == ["rgb", "flow", "depth", "audio"] and cfg.objective.graph == "full"
    run = train(cfg)
    views = ["rgb", "flow", "depth", "audio"]
    assert pairs_logged(run) == {frozenset((a, b)) for i, a in enumerate(views) for b in views[i + 1 :]}  # 6 pairs


def test_four_views_train_on_the_core_graph(four_root, tmp_path):
    over = {"run.dir": tmp_path / "core", "train.max_steps": 2, "objective.graph": "core", "objective.anchor": "rgb"}
    run = train(load_config(FOUR, tiny(four_root, **over)))
    assert pairs_logged(run) == {frozenset(("rgb", v)) for v in ("flow", "depth", "audio")}


def test_cached_window_past_the_end_repeats_the_last_frame():
    import numpy as np

    from mvcoding.cache import CachedClips
    from mvcoding.registry import Clip

    frames = np.arange(10 * 2 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 2)  # (T, C, H, W)

    class Reader:
        def read(self, video_id, start, stop, step):
            return frames[start:stop:step]

    x = CachedClips(Reader(), offset=3)(Clip("v", "v.avi", 4, 4, 2, 25.0, 10))  # frames 7, 9, then past the end
    assert x.shape == (2, 4, 2, 2)
    assert x[:, 0].tolist() == frames[7].tolist() and all(x[:, t].tolist() == frames[9].tolist() for t in (1, 2, 3))


# ----------------------------------------------------------------------------- pickling, spawned workers
BUILT_IN = [n for n in list_views() if view_source(n).startswith("mvcoding.views.")]


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_views_pickle(name, setup):
    """decode, transform and build_encoder (and the whole view, as a spawned DataLoader worker gets it)
    pickle, and the view read back decodes and transforms the clip as the original does."""
    import pickle

    ctx, _, clip = setup
    view = build_view(name, ctx, **small(name))
    for attr in ("decode", "transform", "build_encoder", "check"):
        pickle.dumps(getattr(view, attr))
    back = pickle.loads(pickle.dumps(view))
    for aug in (TRAIN_AUG, EVAL_AUG):
        torch.testing.assert_close(back.transform(back.decode(clip), aug), view.transform(view.decode(clip), aug))
    assert back.build_encoder().feat_dim == view.build_encoder().feat_dim


@pytest.mark.slow  # ~20 s; test_built_in_views_pickle (what spawn needs) and the 4-view runs stay in the default suite
def test_every_built_in_view_trains_and_evaluates_with_spawned_workers(four_root, tmp_path, monkeypatch):
    """DataLoader workers started with spawn get the dataset pickled and import the views afresh."""
    from mvcoding import data
    from mvcoding import train as train_module
    from mvcoding.eval import evaluate
    from mvcoding.eval import features as eval_features

    contexts = []

    def recording(*args, **kwargs):  # data.start_method=spawn reaches the DataLoader
        loader = data.make_loader(*args, **kwargs)
        contexts.append(loader.multiprocessing_context.get_start_method())
        return loader

    monkeypatch.setattr(train_module, "make_loader", recording)
    monkeypatch.setattr(eval_features, "make_loader", recording)
    extra = {f"views.{n}.{k}": v for n in BUILT_IN for k, v in small(n).items()}  # adds lab_l and lab_ab
    extra["data.start_method"] = "spawn"
    over = {"run.dir": tmp_path / "run", "train.max_steps": 2, "objective.graph": "core", "objective.anchor": "rgb",
            "data.workers": 1, **extra}  # fmt: skip
    run = train(load_config(FOUR, tiny(four_root, **over)))
    assert pairs_logged(run) == {frozenset(("rgb", v)) for v in BUILT_IN if v != "rgb"}
    assert contexts == ["spawn"]

    over = {"run.dir": tmp_path / "eval", "checkpoint": run / "checkpoints" / "last.pt", "data.workers": 1,
            "eval.views": f"[{','.join(BUILT_IN)}]", "eval.clips": 1, "eval.linear.epochs": 2, **extra}  # fmt: skip
    out = evaluate("linear", load_config(FOUR, tiny(four_root, **over)))
    results = json.loads((out / "results.json").read_text())
    assert np.isfinite(results["metrics"]["video_top1"]) and contexts[1:] == ["spawn"] * (len(contexts) - 1) != []


@pytest.mark.parametrize(("pin", "device", "pinned"), [("auto", "cpu", False), ("auto", "cuda", True),
                                                      (True, "cpu", True), (False, "cuda", False)])  # fmt: skip
def test_loader_options_pin_memory_only_for_a_gpu_under_auto(pin, device, pinned):
    """The loader settings of training, evaluation and fine-tuning (loader_options): data.pin_memory=auto
    pins host memory only for a GPU (whose copies it lets overlap); true and false are kept."""
    from mvcoding.data import loader_options

    d = load_config(FOUR, ["data.workers=3", "data.prefetch=5", "data.start_method=spawn",
                           f"data.pin_memory={str(pin).lower()}"]).data  # fmt: skip
    options = loader_options(d, torch.device(device))
    assert options == {"workers": 3, "prefetch": 5, "pin_memory": pinned, "start_method": "spawn"}


# --- flow displacements under a crop; data.shared_crop ----------------------------------------------


@pytest.mark.parametrize(
    ("crop", "size", "flip", "expected"),
    [
        ((0.0, 0.0, 1.0, 1.0), 32, False, (25, -25)),  # the whole 32 px frame at 32 px: as cached
        ((0.25, 0.25, 0.5, 0.5), 32, False, (50, -50)),  # half the frame resized to 32 px: doubled
        ((0.0, 0.25, 1.0, 0.5), 32, False, (50, -25)),  # half the width: x doubled, y as cached
        ((0.5, 0.0, 0.5, 1.0), 32, False, (25, -50)),  # half the height: y doubled
        ((0.0, 0.0, 1.0, 1.0), 16, False, (12.5, -12.5)),  # the whole frame at 16 px: halved
        ((0.25, 0.25, 0.5, 0.5), 32, True, (-50, -50)),  # doubled, and a flip negates x
    ],
)
def test_flow_displacements_scale_with_the_crop(crop, size, flip, expected):
    """Cached flow is in pixels of the cached frame; the view's output is in pixels of its `size` crop, over
    the bound. A uniform flow of (+1.96, -1.96) px cached as uint8 140 and 115 (value = u * 40 / 255 - 20
    at bound 20) is (+25/255, -25/255) of the bound in the full frame; expected is in units of 1/255."""
    ctx = ViewContext(dataset="synthetic", root="/none", cache_dir="/none", frames=2, stride=1, size=32)
    view = build_view("flow", ctx, size=size)
    cached = torch.empty(2, 2, 32, 32, dtype=torch.uint8)  # (C, T, H, W): x then y
    cached[0], cached[1] = 140, 115
    y = model_input(view, view.transform(cached, Aug(train=True, crop=crop, flip=flip)))
    assert y.shape == (2, 2, size, size)
    # stretched on the device, after dequantising: exact (the workers' codes are not quantised twice)
    torch.testing.assert_close(y[0], torch.full((2, size, size), expected[0] / 255), rtol=0, atol=1e-6)
    torch.testing.assert_close(y[1], torch.full((2, size, size), expected[1] / 255), rtol=0, atol=1e-6)


def test_stretched_flow_clips_to_the_bound():
    """A displacement the crop's stretch takes past the bound clips to it (+-1), as the cache clips flow."""
    ctx = ViewContext(dataset="synthetic", root="/none", cache_dir="/none", frames=2, stride=1, size=32)
    view = build_view("flow", ctx)
    cached = torch.empty(2, 2, 32, 32, dtype=torch.uint8)
    cached[0], cached[1] = 250, 5  # +-(245/255) of the bound, doubled by a half-size crop
    y = model_input(view, view.transform(cached, Aug(train=True, crop=(0.25, 0.25, 0.5, 0.5), flip=True)))
    assert torch.equal(y[0], torch.full_like(y[0], -1.0)) and torch.equal(y[1], torch.full_like(y[1], -1.0))


def recording_view(name: str):
    """A view whose output is the augmentation it was given: (y0, x0, h, w, flip)."""
    from mvcoding.registry import View

    return View(name=name, channels=1, decode=lambda clip: torch.zeros(1, clip.num_frames, 8, 8, dtype=torch.uint8),
                transform=lambda x, aug: torch.tensor([*aug.crop, float(aug.flip)]), build_encoder=None)  # fmt: skip


@pytest.mark.parametrize("flip", [True, False])
def test_shared_crop_false_gives_each_view_its_own_crop_and_one_flip(synthetic_root, flip):
    """data.shared_crop=false (through the trainer's data): every view its own random crop, every view
    the item's one flip; data.shared_crop=true: one crop and flip for all."""
    from mvcoding.train import build_data

    views = {n: recording_view(n) for n in ("a", "b", "c")}
    items = {}
    for shared in (False, True):
        over = {"data.shared_crop": shared, "data.flip": flip, "data.scale": "[0.2,0.6]"}
        cfg = load_config(str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), tiny(synthetic_root, **over))
        data = build_data(cfg, views, torch.device("cpu"))[1]
        items[shared] = [data[i] for i in range(len(data))]
    assert len(items[False]) == 16
    for own, one in zip(items[False], items[True], strict=True):
        a, b, c = own["a"], own["b"], own["c"]
        assert not torch.equal(a[:4], b[:4]) and not torch.equal(b[:4], c[:4]) and not torch.equal(a[:4], c[:4])
        assert a[4] == b[4] == c[4]  # one flip
        for box in (a, b, c):
            y0, x0, h, w = box[:4].tolist()
            assert 0 <= y0 and 0 <= x0 and y0 + h <= 1 + 1e-9 and x0 + w <= 1 + 1e-9 and h * w <= 0.6 + 1e-6
        assert torch.equal(one["a"], one["b"]) and torch.equal(one["a"], one["c"])  # shared: one crop and flip
    flips = {bool(it["a"][4]) for it in items[False]}
    assert flips == ({False, True} if flip else {False})


@pytest.mark.parametrize("layout", ["CTHW", "TCHW", "THWC"])  # THWC: decord's frames; TCHW: the caches'
@pytest.mark.parametrize("channels, frames", [(1, 16), (2, 16), (3, 8), (2, 7), (3, 1), (4, 3)])
def test_uint8_crop_resize_equals_a_per_plane_resize(channels, frames, layout):
    """crop_resize resizes uint8 clips as groups of 4 planes (any channel count, padded): each plane must
    come out as a plain per-plane resize of the cropped bytes would, within one grey level (the
    reference resizes float32 and rounds; torch's uint8 kernel rounds its fixed-point sums)."""
    import torch.nn.functional as F

    from mvcoding.transforms import crop_resize

    g = torch.Generator().manual_seed(channels * 100 + frames)
    x = torch.randint(0, 256, (channels, frames, 40, 54), dtype=torch.uint8, generator=g)
    if layout == "THWC":  # decord's frames: (T, H, W, C) memory seen as (C, T, H, W)
        x = x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
    elif layout == "TCHW":  # the raw rgb, JPEG, flow and depth caches' entries
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    crop = (0.1, 0.2, 0.7, 0.6)  # rows 4:32, columns 11:43 of a 40 x 54 frame
    out = crop_resize(x, crop, 24)
    assert out.shape == (channels, frames, 24, 24) and out.dtype == torch.uint8
    for c in range(channels):
        for t in range(frames):
            plane = x[c, t, 4:32, 11:43].float()[None, None]
            ref = F.interpolate(plane, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
            diff = (out[c, t].float() - ref[0, 0].round().clamp(0, 255)).abs().max().item()
            assert diff <= 1, (c, t, diff)
