"""The `depth` view: per-frame depth, stored once by its precompute stage in the HDF5 cache.

Sources (views.depth.source):
  synthetic  the synthetic generator's ground truth: 16-bit PNGs <dataset.root>/depth/<id'>/00000.png
  folder     the same layout under views.depth.folder (how RGB-D datasets ship depth)
  midas      a monocular estimator: torch.hub.load(views.depth.hub_repo, views.depth.model,
             source="local") with the weights file views.depth.weights (nothing is downloaded)
where <id'> is the video id without its first component ("UCF-101/Class/v_x" -> "Class/v_x").

Storage: (T, 1, H, W) uint8 per video. 0 marks invalid depth (a 0 in the source, as RGB-D sensors
write, or non-finite); valid depth maps linearly onto 1..255 between the video's smallest and
largest valid value, which the entry keeps as attributes depth_lo and depth_hi (dequantize_depth
inverts it). Per-video scaling keeps the motion in depth (approach, recede) at full resolution
whatever the source's units are; MiDaS gives relative inverse depth, which has no absolute scale
anyway (its settings say quantity=inverse_depth: larger is nearer).

The view feeds the encoder that code divided by 255: a float in [0, 1] relative to the video
(nearest valid depth ~0, farthest 1), so the motion in depth keeps its full range; invalid pixels
read 0, like the zero holes of RGB-D sensors. With source=midas 1 is the nearest.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from mvcoding.encoders import build_encoder
from mvcoding.errors import UserError
from mvcoding.files import load_weights, weights_only_loads
from mvcoding.registry import Aug, Precompute, Source, View, ViewContext, register_view
from mvcoding.transforms import crop_resize

SOURCES = ("synthetic", "folder", "midas")
ENCODING = {"kind": "uint8_minmax_per_video", "invalid": 0, "levels": [1, 255], "attrs": ["depth_lo", "depth_hi"]}
MIDAS_WEIGHTS = {  # where the MiDaS README points for each hub model
    "MiDaS_small": "https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_small_256.pt",
    "MiDaS": "https://github.com/isl-org/MiDaS/releases/download/v2_1/midas_v21_384.pt",
    "DPT_Hybrid": "https://github.com/isl-org/MiDaS/releases/download/v3/dpt_hybrid_384.pt",
    "DPT_Large": "https://github.com/isl-org/MiDaS/releases/download/v3/dpt_large_384.pt",
}


def quantize_depth(d: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Depth (...) float -> (uint8 with 0 = invalid and valid values on 1..255, lo, hi)."""
    d = d.astype(np.float64)
    valid = np.isfinite(d) & (d > 0)
    if not valid.any():
        return np.zeros(d.shape, np.uint8), 0.0, 0.0
    lo, hi = float(d[valid].min()), float(d[valid].max())
    scaled = (np.where(valid, d, lo) - lo) * (254.0 / max(hi - lo, 1e-12))
    return np.where(valid, 1 + np.rint(scaled), 0).astype(np.uint8), lo, hi


def dequantize_depth(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of quantize_depth as float32, NaN where invalid; error <= (hi - lo) / 508."""
    d = lo + (u.astype(np.float32) - 1) * np.float32((hi - lo) / 254.0)
    return np.where(u > 0, d, np.nan).astype(np.float32)


def frame_dir(folder: str | Path, video_id: str) -> Path:
    """The per-frame depth folder of a video: <folder>/<video_id without its first component>."""
    rest = video_id.split("/", 1)[1] if "/" in video_id else video_id
    return Path(folder) / rest


def read_depth_frames(directory: Path, num_frames: int, resolution) -> np.ndarray:
    """Depth images of one video (T, H, W) as stored (uint16 or uint8), resized with nearest neighbours."""
    import cv2

    files = sorted(directory.glob("*.png"))
    if len(files) < num_frames - 2 or not files:
        raise UserError(f"depth folder {directory} has {len(files)} PNG frames, the video has {num_frames}")
    frames = []
    for f in files[:num_frames]:
        d = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if d is None:
            raise UserError(f"cannot read depth image {f}")
        d = d[..., 0] if d.ndim == 3 else d
        if resolution:
            d = cv2.resize(d, (resolution[1], resolution[0]), interpolation=cv2.INTER_NEAREST)
        frames.append(d)
    frames += [frames[-1]] * (num_frames - len(frames))  # decoders may count a frame or two more
    return np.stack(frames)


_MIDAS: dict = {}


def load_midas(hub_repo, model: str, weights, device: str, *, check_only: bool = False):
    """(model, transform) of MiDaS from a local hub repo and weights file; UserError naming what is missing."""
    url = MIDAS_WEIGHTS.get(model, "https://github.com/isl-org/MiDaS#setup")
    if not hub_repo or not (Path(hub_repo) / "hubconf.py").is_file():
        raise UserError(
            f"views.depth.hub_repo={hub_repo!r} is not a MiDaS checkout; clone https://github.com/isl-org/MiDaS "
            f"there and set views.depth.hub_repo=<that dir> (MiDaS_small also needs the hub repo "
            f"rwightman/gen-efficientnet-pytorch in torch.hub.get_dir())"
        )
    if not weights or not Path(weights).is_file():
        raise UserError(f"MiDaS weights views.depth.weights={weights!r} not found; download {url} and set the path")
    if check_only:
        return None
    if (model, device) not in _MIDAS:
        import torch

        # the hub repo's constructors load backbone weights from the hub cache themselves (MiDaS_small:
        # gen-efficientnet through torch.hub.load_state_dict_from_url, which by default unpickles anything):
        # weights_only_loads makes every load of theirs weights_only=True, as ours is
        with weights_only_loads(f"the MiDaS hub repo {hub_repo} ({model})"):
            net = torch.hub.load(str(hub_repo), model, source="local", pretrained=False)
            tf = torch.hub.load(str(hub_repo), "transforms", source="local")
        net.load_state_dict(load_weights(weights, "MiDaS weights (views.depth.weights)"))
        transform = tf.small_transform if model == "MiDaS_small" else tf.dpt_transform
        _MIDAS[(model, device)] = (net.eval().to(device), transform)
    return _MIDAS[(model, device)]


def midas_depth(frames: np.ndarray, *, model: str, hub_repo, weights, device: str, batch: int = 8) -> np.ndarray:
    """Relative inverse depth (T, H, W) float32 of frames (T, H, W, 3) uint8 RGB."""
    import torch
    import torch.nn.functional as F

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    net, transform = load_midas(hub_repo, model, weights, device)
    t, h, w, _ = frames.shape
    out = np.empty((t, h, w), np.float32)
    with torch.inference_mode():
        for i in range(0, t, batch):
            x = torch.cat([transform(f) for f in frames[i : i + batch]]).to(device)
            y = net(x).unsqueeze(1)  # (B, 1, h', w')
            out[i : i + batch] = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False)[:, 0].cpu().numpy()
    return out


def cache_entry(
    source: Source, *, kind: str, folder=None, model=None, hub_repo=None, weights=None, device="auto"
) -> tuple[np.ndarray, dict]:
    """The precompute stage: one video's depth (T, 1, H, W) uint8 (see the module doc) and its attributes."""
    if kind == "midas":
        d = midas_depth(source.frames(), model=model, hub_repo=hub_repo, weights=weights, device=device)
    else:
        from mvcoding.video import video_info

        num_frames = video_info(source.path)[0]
        d = read_depth_frames(frame_dir(folder, source.video_id), num_frames, source.resolution)
    u, lo, hi = quantize_depth(d)
    return u[:, None], {"depth_lo": lo, "depth_hi": hi}


@register_view("depth")
def depth(
    *,
    ctx: ViewContext,
    encoder: str = "small3d",
    width: int | None = None,
    size: int | None = None,
    source: str = "synthetic",
    folder: str | None = None,
    model: str = "MiDaS_small",
    hub_repo: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    resolution: list[int] | None = None,
    offset: int = 0,
) -> View:
    """Depth (1, T, size, size) in [0, 1] per video (see the module doc), from the cache of
    (source, resolution). source: synthetic (the generator's ground truth), folder (per-frame PNGs
    under `folder`) or midas (`model` from the local torch.hub repo `hub_repo` with the weights file
    `weights`, run on `device` by the precompute); resolution: [H, W] the cache holds (null =
    native); offset: frames to shift this view's window by."""
    size = size or ctx.size
    if source not in SOURCES:
        raise UserError(f"views.depth.source={source!r} is not valid; choose one of: {', '.join(SOURCES)}")
    settings: dict = {"source": source, "quantity": "depth", "encoding": dict(ENCODING)}
    kw: dict = {"kind": source, "folder": str(Path(ctx.root) / "depth")}
    if source == "folder":
        if not folder:
            raise UserError("views.depth.source=folder needs views.depth.folder=<dir of <class>/<video>/00000.png>")
        kw["folder"] = settings["folder"] = str(folder)
    elif source == "midas":
        settings.update(quantity="inverse_depth", model=model, weights=Path(weights).name if weights else None)
        kw.update(model=model, hub_repo=hub_repo, weights=weights, device=device)
    stage = Precompute(
        compute=partial(cache_entry, **kw),
        settings=settings,
        resolution=resolution,
        label=source,
        gpu=source == "midas",
        offset=offset,
        setup=partial(load_midas, hub_repo, model, weights, "cpu", check_only=True) if source == "midas" else None,
    )
    return View(
        name="depth",
        channels=1,
        decode=None,  # the framework reads the cache
        transform=partial(transform_depth, size=size),
        device_transform=depth_input,
        build_encoder=partial(build_encoder, encoder, in_channels=1, width=width),
        precompute=stage,
    )


def transform_depth(x: torch.Tensor, aug: Aug, *, size: int) -> torch.Tensor:
    """In the workers: cached depth (1, T, H, W) uint8 -> (1, T, size, size) uint8, cropped and flipped."""
    x = crop_resize(x, aug.crop, size)  # resize the bytes: cheaper
    return x.flip(-1) if aug.flip else x


def depth_input(x: torch.Tensor) -> torch.Tensor:
    """On the device, batched: (..., 1, T, H, W) uint8 -> float32 in [0, 1]."""
    return x.float() / 255
