"""Optical flow between consecutive frames: OpenCV DIS / Farneback / TV-L1 and torchvision RAFT.

    flow = compute_flow(frames, "dis", preset="medium")   # (T, H, W, 3) uint8 -> (T, 2, H, W) float32

flow[t] is the displacement (x, y) in pixels from frame t to frame t+1, so every clip frame t has a
flow frame at the same t. The last frame has no successor: flow[T-1] repeats flow[T-2] (a clip that
ends at the video's last frame still sees the motion there); a one-frame video gets zero flow.
The OpenCV algorithms run on grayscale frames; RAFT on the RGB frames.

Every algorithm is one entry of ALGORITHMS: its default parameters and the function computing the
pairs. `resolve_params` merges a config's parameters over the defaults (a misspelt one is an error),
and the resolved parameters are what the cache records as provenance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvcoding.errors import UserError

DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}


@dataclass(frozen=True)
class Algorithm:
    """pairs(frames (T, H, W, 3) uint8, **params) -> (T-1, 2, H, W) float32 flow of frame t -> t+1."""

    pairs: Callable[..., np.ndarray]
    defaults: dict


def _gray(frames: np.ndarray) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]


def _opencv_pairs(frames: np.ndarray, calc: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    gray = _gray(frames)
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


def _farneback(frames: np.ndarray, **p) -> np.ndarray:
    import cv2

    args = (p["pyr_scale"], p["levels"], p["winsize"], p["iterations"], p["poly_n"], p["poly_sigma"], 0)
    return _opencv_pairs(frames, lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, *args))


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


_RAFT: dict = {}  # (name, device) -> model, loaded once per process


def _raft_model(name: str, device: str):
    import torch
    from torchvision.models import optical_flow

    if (name, device) not in _RAFT:
        path, url = raft_weights_file(name)
        if not path.is_file():
            raise UserError(f"RAFT weights {path} not found; download {url} to that path (curl -L -o {path} {url})")
        model = getattr(optical_flow, name)(weights=None)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
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
    "farneback": Algorithm(
        _farneback, {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2}
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
    return {**defaults, **(params or {})}


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


def cache_description(settings: dict, *, root: str) -> dict:
    """What a flow cache for view settings (algorithm, params, resolution, bound) holds: its provenance."""
    algorithm = settings.get("algorithm") or "dis"
    params = resolve_params(algorithm, settings.get("params"))
    bound = float(settings.get("bound") or 20.0)
    if bound <= 0:
        raise UserError(f"views.flow.bound={bound} is not valid; use a positive number of pixels (default 20)")
    return {
        "algorithm": algorithm,
        "params": {k: v for k, v in params.items() if k not in RUNTIME_PARAMS},
        "resolution": settings.get("resolution"),
        "encoding": {"kind": "uint8_linear", "bound": bound},
        "source_root": root,
    }


def decode_video(path: str, resolution) -> tuple[np.ndarray, float]:
    """All frames (T, H, W, 3) uint8 of a video, resized on decode to resolution [H, W] unless None; and fps."""
    from mvcoding.video import open_video

    h, w = resolution if resolution else (-1, -1)
    vr = open_video(path, width=w, height=h)
    try:
        frames = vr.get_batch(list(range(len(vr)))).asnumpy()
    except Exception as e:  # a truncated file can open and then fail mid-stream
        raise UserError(f"cannot decode video {path}: {str(e).strip().splitlines()[0][:200] if str(e) else e!r}") from e
    return frames, float(vr.get_avg_fps() or 25.0)


def cache_entry(record, *, algorithm: str, params: dict, resolution, bound: float) -> tuple[np.ndarray, dict]:
    """One flow cache entry: (T, 2, H, W) uint8 quantised to +-bound, and its attributes."""
    from mvcoding.cache import quantize

    frames, fps = decode_video(record.path, resolution)
    flow = compute_flow(frames, algorithm, **params)
    return quantize(flow, bound), {"fps": fps}
