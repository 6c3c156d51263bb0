"""The `flow` view: optical flow between consecutive frames, computed once by its precompute stage
(OpenCV DIS / Farneback / TV-L1 or torchvision RAFT) into the HDF5 cache, read back for training.

    flow = compute_flow(frames, "dis", preset="medium")   # (T, H, W, 3) uint8 -> (T, 2, H, W) float32
    mvcoding precompute flow CONFIG [overrides]           # fills the cache of views.flow's settings

flow[t] is the displacement (x, y) in pixels from frame t to frame t+1, so every clip frame t has a
flow frame at the same t. The last frame has no successor: flow[T-1] repeats flow[T-2] (a clip that
ends at the video's last frame still sees the motion there); a one-frame video gets zero flow.
The OpenCV algorithms run on grayscale frames; RAFT on the RGB frames.

Farneback's `gain`: OpenCV's Farneback solves a 2x2 system per pixel whose determinant it pads with a
fixed 1e-3 (meant for 0..255 contrast); the determinant grows with the fourth power of the contrast, so
on dim or smooth texture (a few grey levels: real footage's shadows, dark clips) that padding pulled the
flow towards zero (a 3 px shift of a 1/f texture of 3 grey levels came out as 1.3 px, 2 levels 0.2 px).
The grey frames are multiplied by `gain` (16, as float32) first, which makes the padding 16^4 times
smaller: such texture then gives the shift within 0.05 px (tests/test_flow_accuracy.py), like DIS.
Flat noise without texture then gets noise-driven flow (a few px) as DIS gives it; gain=1 is OpenCV's
behaviour.

Every algorithm is one entry of ALGORITHMS: its default parameters and the function computing the
pairs. `resolve_params` merges a config's parameters over the defaults (a misspelt one is an error),
and the resolved parameters (less the runtime ones) identify the cache. The cache stores flow
clipped to +-bound pixels as uint8 (mvcoding.cache.quantize: the TV-L1 cache convention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mvcoding.cache import quantize
from mvcoding.encoders import build_encoder
from mvcoding.errors import UserError
from mvcoding.files import load_weights
from mvcoding.registry import Aug, Precompute, Source, View, ViewContext, register_view
from mvcoding.transforms import crop_box, crop_resize

DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


@dataclass(frozen=True)
class Algorithm:
    """pairs(frames (T, H, W, 3) uint8, **params) -> (T-1, 2, H, W) float32 flow of frame t -> t+1."""

    pairs: Callable[..., np.ndarray]
    defaults: dict


def _gray(frames: np.ndarray) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def _opencv_pairs(
    frames: np.ndarray, calc: Callable[[np.ndarray, np.ndarray], np.ndarray], gain: float | None = None
) -> np.ndarray:
    gray = _gray(frames)
    if gain is not None:  # float32 frames of grey levels times gain
        gray = [g.astype(np.float32) * np.float32(gain) for g in gray]
    out = np.empty((len(gray) - 1, 2, *gray[0].shape), np.float32)
    for t in range(len(gray) - 1):
        out[t] = calc(gray[t], gray[t + 1]).transpose(2, 0, 1)  # (H, W, 2) -> (2, H, W)
    return out


def _dis(frames: np.ndarray, *, preset: str) -> np.ndarray:
    import cv2

    if preset not in DIS_PRESETS:
        raise UserError(f"DIS preset {preset!r} is not valid; choose one of: {', '.join(DIS_PRESETS)}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    return _opencv_pairs(frames, lambda a, b: dis.calc(a, b, None))


def _check_gain(gain) -> None:
    if isinstance(gain, bool) or not isinstance(gain, int | float) or not 0 < gain < 1e6:
        raise UserError(f"Farneback gain={gain!r} is not valid: a positive number (default 16; see views/flow.py)")


def _farneback(frames: np.ndarray, *, gain: float, **p) -> np.ndarray:
    import cv2

    _check_gain(gain)
    args = (p["pyr_scale"], p["levels"], p["winsize"], p["iterations"], p["poly_n"], p["poly_sigma"], 0)
    return _opencv_pairs(frames, lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, *args), gain)


def tvl1_factory() -> Callable:
    """cv2.optflow's Dual TV-L1 constructor, or UserError saying how to install it."""
    import cv2

    optflow = getattr(cv2, "optflow", None)
    create = getattr(optflow, "DualTVL1OpticalFlow_create", None) or getattr(optflow, "createOptFlow_DualTVL1", None)
    if create is None:
        raise UserError(
            "TV-L1 needs opencv-contrib-python: pip install 'mvcoding[tvl1]'; it conflicts with opencv-python "
            "(both install cv2), so then run: pip uninstall -y opencv-python && "
            "pip install --force-reinstall --no-deps opencv-contrib-python"
        )
    return create


def _tvl1(frames: np.ndarray, **p) -> np.ndarray:
    tvl1 = tvl1_factory()(**p)
    return _opencv_pairs(frames, lambda a, b: tvl1.calc(a, b, None))


def raft_weights_file(name: str) -> tuple[Path, str]:
    """(local path, download URL) of torchvision's RAFT weights `name` ("raft_small" or "raft_large")."""
    import torch
    from torchvision.models import optical_flow

    weights = {"raft_small": optical_flow.Raft_Small_Weights, "raft_large": optical_flow.Raft_Large_Weights}[name]
    url = weights.DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


def check_setup(algorithm: str, name: str | None = None) -> None:
    """The flow stage's Precompute.setup: TV-L1 without opencv-contrib, or RAFT without its weights, is one
    line before any video (not a failure stored for every video). name: RAFT's weights ("raft_small")."""
    try:
        if algorithm == "tvl1":
            tvl1_factory()
        elif algorithm.startswith("raft"):
            path, url = raft_weights_file(name or algorithm)
            if not path.is_file():
                raise UserError(f"RAFT weights {path} not found; download {url} to that path (curl -L -o {path} {url})")
    except UserError as e:
        raise UserError(f"views.flow.algorithm={algorithm} cannot run here: {e}") from None


_RAFT: dict = {}  # (name, device) -> model, loaded once per process


def _raft_model(name: str, device: str):
    from torchvision.models import optical_flow

    if (name, device) not in _RAFT:
        path, url = raft_weights_file(name)
        if not path.is_file():
            raise UserError(f"RAFT weights {path} not found; download {url} to that path (curl -L -o {path} {url})")
        model = getattr(optical_flow, name)(weights=None)
        model.load_state_dict(load_weights(path, "RAFT weights"))  # weights_only=True: a payload is refused
        _RAFT[(name, device)] = model.eval().to(device)
    return _RAFT[(name, device)]


def _raft(frames: np.ndarray, *, name: str, batch: int, iters: int, device: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = _raft_model(name, device)
    t, h, w, _ = frames.shape
    # RAFT needs sides divisible by 8 and at least 128: resize to that, then the flow back (and rescale it)
    rh, rw = (max(128, -(-side // 8) * 8) for side in (h, w))
    scale = torch.tensor([w / rw, h / rh], device=device).view(1, 2, 1, 1)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # (T, 3, H, W) uint8
    out = np.empty((t - 1, 2, h, w), np.float32)
    with torch.inference_mode():
        for i in range(0, t - 1, batch):
            j = min(i + batch, t - 1)
            pair = x[i : j + 1].to(device).float() / 127.5 - 1.0  # frames i..j: (B+1, 3, H, W)
            if (rh, rw) != (h, w):
                pair = F.interpolate(pair, size=(rh, rw), mode="bilinear", align_corners=False)
            flow = model(pair[:-1], pair[1:], num_flow_updates=iters)[-1]  # (B, 2, rh, rw)
            if (rh, rw) != (h, w):
                flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False) * scale
            out[i:j] = flow.float().cpu().numpy()
    return out


ALGORITHMS: dict[str, Algorithm] = {
    "dis": Algorithm(_dis, {"preset": "medium"}),
    "farneback": Algorithm(  # gain: the grey levels' multiplier (the module doc says why)
        _farneback,
        {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "gain": 16},
    ),
    "tvl1": Algorithm(_tvl1, {}),  # OpenCV's defaults (tau 0.25, lambda 0.15, theta 0.3, 5 scales, ...)
    "raft_small": Algorithm(_raft, {"name": "raft_small", "batch": 16, "iters": 12, "device": "auto"}),
    "raft_large": Algorithm(_raft, {"name": "raft_large", "batch": 8, "iters": 12, "device": "auto"}),
}
RUNTIME_PARAMS = {"batch", "device"}  # change speed, not the result: not part of the cache's provenance


def resolve_params(algorithm: str, params: dict | None = None) -> dict:
    """The algorithm's default parameters updated with `params`; unknown algorithms or keys raise UserError."""
    if algorithm not in ALGORITHMS:
        raise UserError(f"unknown flow algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    defaults = ALGORITHMS[algorithm].defaults
    unknown = sorted(set(params or {}) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise UserError(f"unknown parameter {unknown[0]!r} of flow algorithm {algorithm!r}; valid: {valid}")
    resolved = {**defaults, **(params or {})}
    if algorithm == "farneback":
        _check_gain(resolved["gain"])  # when the view is built, before any precompute
    return resolved


def compute_flow(frames: np.ndarray, algorithm: str = "dis", **params) -> np.ndarray:
    """Flow (T, 2, H, W) float32 of frames (T, H, W, 3) uint8 RGB; flow[t] goes from frame t to t+1.

    flow[T-1] repeats flow[T-2]; T == 1 gives zeros. Channel 0 is x (rightwards), 1 is y (downwards).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    p = resolve_params(algorithm, params)
    t, h, w, _ = frames.shape
    if t < 2:
        return np.zeros((t, 2, h, w), np.float32)
    pairs = ALGORITHMS[algorithm].pairs(frames, **p)  # (T-1, 2, H, W)
    return np.concatenate([pairs, pairs[-1:]])


def cache_entry(source: Source, *, algorithm: str, params: dict, bound: float) -> tuple[np.ndarray, dict]:
    """The precompute stage: one video's flow (T, 2, H, W) uint8 quantised to +-bound."""
    return quantize(compute_flow(source.frames(), algorithm, **params), bound), {}


@register_view("flow")
def flow(
    *,
    ctx: ViewContext,
    encoder: str = "small3d",
    width: int | None = None,
    size: int | None = None,
    algorithm: str = "dis",
    params: dict | None = None,
    resolution: list[int] | None = None,
    bound: float = 20.0,
    offset: int = 0,
) -> View:
    """Optical flow (x, y) between frames t and t+1 at every clip frame t, from the cache of
    (algorithm, params, resolution, bound): algorithm dis (default), farneback, tvl1, raft_small or
    raft_large; params the algorithm's parameters (e.g. {preset: fast} for dis); resolution [H, W] the
    flow is computed and stored at (null = native size; flow is in those pixels); values clipped to
    +-bound pixels, fed to the encoder as flow / bound; offset: frames to shift this view's window by."""
    size = size or ctx.size
    resolved = resolve_params(algorithm, params)  # with the runtime ones (batch, device)
    if not bound > 0:
        raise UserError(f"views.flow.bound={bound} is not valid: a positive number of pixels (default 20)")
    bound = float(bound)
    stage = Precompute(
        compute=partial(cache_entry, algorithm=algorithm, params=resolved, bound=bound),
        settings={
            "algorithm": algorithm,
            "params": {k: v for k, v in resolved.items() if k not in RUNTIME_PARAMS},
            "encoding": {"kind": "uint8_linear", "bound": bound},
        },
        resolution=resolution,
        label=algorithm,
        gpu=algorithm.startswith("raft"),
        offset=offset,
        setup=partial(check_setup, algorithm, resolved.get("name")),
    )
    return View(
        name="flow",
        channels=2,
        decode=None,  # the framework reads the cache
        transform=partial(transform_flow, size=size),
        device_transform=flow_input,
        build_encoder=partial(build_encoder, encoder, in_channels=2, width=width),
        precompute=stage,
    )


def transform_flow(x: torch.Tensor, aug: Aug, *, size: int) -> dict[str, torch.Tensor]:
    """In the workers: cached flow (2, T, H, W) uint8 -> {"codes": (2, T, size, size) uint8, cropped, resized and
    flipped with aug, still quantised; "scale": (2,) float32, what the displacements (x, y) are multiplied by
    on the device}. Resizing a crop stretches displacements (x by size / crop width, y by size / crop height)
    and a flip negates x; flow_input applies both, batched, when it dequantises."""
    h, w = x.shape[-2:]
    _, _, bh, bw = crop_box(h, w, aug.crop)
    codes = crop_resize(x, aug.crop, size)  # on the quantised bytes: dequantising is linear
    if aug.flip:
        codes = codes.flip(-1)
    scale = torch.tensor([-size / bw if aug.flip else size / bw, size / bh], dtype=torch.float32)
    return {"codes": codes, "scale": scale}


def flow_input(x) -> torch.Tensor:
    """On the device, batched: {"codes": (..., 2, T, H, W) uint8, "scale": (..., 2)} (transform_flow's items)
    -> flow / bound in [-1, 1]: code u is u * 2 bound / 255 - bound pixels (mvcoding.cache.dequantize), times
    its item's scale for x and y (the crop's stretch, the flip's sign), clipped to the bound. Plain codes
    (a tensor) are dequantised as they are."""
    if not isinstance(x, dict):
        return x.float() * (2.0 / 255.0) - 1.0
    flow = x["codes"].float() * (2.0 / 255.0) - 1.0
    return (flow * x["scale"].float()[..., None, None, None]).clamp_(-1.0, 1.0)
