"""RGB frames: the `rgb` view, decoded with decord from the video, or read from a decode-once cache.

With `cache: true` the frames are decoded once at `resolution` by the view's precompute stage
(`mvcoding precompute rgb CONFIG`) and training never opens a video file. cache_format:
  jpeg  each frame JPEG-encoded (quality `jpeg_quality`), stored as one padded byte row per frame
        (a uint32 length, then the bytes): about 11x smaller than raw on UCF101-like frames
  raw   the decoded uint8 frames, uncompressed (lzf saves 9-16% of raw frames, reads 5-6x slower):
        the fastest to read, about 11x larger on disk
BENCHMARKS.md (the loader sections of issue 11) has the measurements behind the choice. lab_l and
lab_ab with the same cache settings read the same cache (Precompute.name = "rgb").

jpeg_decode: where a JPEG cache is decoded.
  workers  in the DataLoader workers on the CPU (torchvision's decode_jpeg, libjpeg-turbo)
  device   batched on the model's device: workers hand over the undecoded bytes with the item's crop
           and flip, and one decode_jpeg call per batch decodes every frame (nvJPEG on a GPU)
  auto     device when the run's device is a GPU, else workers (the default)
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from mvcoding.encoders import build_encoder
from mvcoding.errors import UserError, first_line
from mvcoding.registry import Aug, Clip, Precompute, Source, View, ViewContext, register_view
from mvcoding.transforms import crop_resize, normalize
from mvcoding.video import read_frames

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def decode_rgb(clip: Clip, *, offset: int = 0, resolution=None) -> torch.Tensor:
    """The clip's frames as (3, T, H, W) uint8, decoded by decord (resized on decode when resolution=[H, W])."""
    h, w = resolution if resolution else (-1, -1)
    indices = [min(i + offset, clip.video_frames - 1) for i in clip.frame_indices]
    frames = read_frames(clip.path, indices, width=w, height=h)  # (T, H, W, 3)
    return torch.from_numpy(frames).permute(3, 0, 1, 2)


CACHE_FORMATS = ("jpeg", "raw")


def pack_jpeg(frames: np.ndarray, quality: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 RGB -> (T, 1, 1, L) uint8: per frame a little-endian uint32 length, then
    that many JPEG bytes, zero-padded to the longest frame (zeros cost nothing under lzf)."""
    import cv2

    encoded = []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(f[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise UserError(f"OpenCV could not JPEG-encode a frame of shape {f.shape}")
        encoded.append(buf.reshape(-1))
    out = np.zeros((len(encoded), 1, 1, 4 + max(len(e) for e in encoded)), np.uint8)
    for t, e in enumerate(encoded):
        out[t, 0, 0, :4] = np.frombuffer(np.uint32(len(e)).astype("<u4").tobytes(), np.uint8)
        out[t, 0, 0, 4 : 4 + len(e)] = e
    return out


def jpeg_bytes(rows: torch.Tensor) -> list[torch.Tensor]:
    """(N, L) uint8 rows of pack_jpeg (a little-endian uint32 length, the bytes, zeros) -> N 1-D views of
    the JPEG bytes."""
    n = rows[:, :4].to(torch.int64) @ torch.tensor([1, 1 << 8, 1 << 16, 1 << 24])
    return [row[4 : 4 + k] for row, k in zip(rows, n.tolist(), strict=True)]


def decode_frames(rows: torch.Tensor, device="cpu") -> torch.Tensor:
    """(N, L) rows of pack_jpeg on the host -> (N, 3, H, W) uint8 RGB on `device`, in one decode_jpeg call
    (libjpeg-turbo on the CPU: the same bytes as OpenCV's decode and 1.3x faster; nvJPEG on a GPU)."""
    from torchvision.io import decode_jpeg

    try:
        return torch.stack(decode_jpeg(jpeg_bytes(rows), device=device))
    except RuntimeError as e:
        first = first_line(e)
        raise UserError(
            f"a JPEG frame of the rgb cache cannot be decoded ({first}); repair it with: mvcoding precompute rgb CONFIG"
        ) from e


def unpack_jpeg(stored: np.ndarray) -> np.ndarray:
    """(T, 1, 1, L) rows of pack_jpeg -> frames (T, 3, H, W) uint8 RGB (in the workers)."""
    return decode_frames(torch.from_numpy(stored[:, 0, 0])).numpy()


def cache_entry(source: Source, *, cache_format: str, quality: int) -> tuple[np.ndarray, dict]:
    """The precompute stage: the video's frames at the stage's resolution, as JPEG rows or raw (T, 3, H, W)."""
    frames = source.frames()  # (T, H, W, 3)
    if cache_format == "raw":
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), {}
    return pack_jpeg(frames, quality), {"height": frames.shape[1], "width": frames.shape[2]}


def rgb_stage(*, cache_format: str, jpeg_quality: int, resolution, offset: int, unpack: bool = True) -> Precompute:
    """The decode-once stage shared by rgb, lab_l and lab_ab (one cache: name "rgb"); unpack=False: a JPEG
    cache is read as its stored rows (jpeg_decode=device), not decoded in the workers."""
    if cache_format not in CACHE_FORMATS:
        raise UserError(f"views.rgb.cache_format={cache_format!r} is not valid: one of: {', '.join(CACHE_FORMATS)}")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"views.rgb.jpeg_quality={jpeg_quality} is not valid: an integer in [1, 100]")
    jpeg = cache_format == "jpeg"
    return Precompute(
        compute=partial(cache_entry, cache_format=cache_format, quality=jpeg_quality),
        settings={"format": cache_format, **({"quality": jpeg_quality} if jpeg else {})},
        resolution=resolution,
        label=cache_format,
        name="rgb",
        offset=offset,
        unpack=unpack_jpeg if jpeg and unpack else None,
        compression="lzf" if jpeg else None,  # raw frames: lzf saves 9-16%, reads 5-6x slower (BENCHMARKS.md)
    )


JPEG_DECODE = ("auto", "workers", "device")


def jpeg_on_device(ctx: ViewContext, *, jpeg_decode: str, cache: bool, cache_format: str, view: str) -> bool:
    """Whether the view's JPEG cache is decoded batched on the device (jpeg_decode, resolved for ctx.device)."""
    if jpeg_decode not in JPEG_DECODE:
        raise UserError(f"views.{view}.jpeg_decode={jpeg_decode!r} is not valid: one of: {', '.join(JPEG_DECODE)}")
    if jpeg_decode == "device" and not (cache and cache_format == "jpeg"):
        raise UserError(
            f"views.{view}.jpeg_decode=device decodes the JPEG cache on the device; it needs "
            f"views.{view}.cache=true and cache_format=jpeg (or set jpeg_decode=auto)"
        )
    if jpeg_decode == "auto":
        return cache and cache_format == "jpeg" and ctx.device.startswith("cuda")
    return jpeg_decode == "device"


def jpeg_rows(x: torch.Tensor, aug: Aug) -> dict:
    """In the workers, for jpeg_decode=device: the clip's cached JPEG rows, undecoded, and the item's crop
    and flip: {"host_jpeg": (T, L) uint8, "host_aug": (5,) float64 [y0, x0, h, w, flip]} (a NaN box: the
    central square; [nan, p, nan, nan]: eval's (p,)). x: (1, T, 1, L) as the cache stores it."""
    nan = float("nan")
    box = (nan,) * 4 if aug.crop is None else (nan, aug.crop[0], nan, nan) if len(aug.crop) == 1 else aug.crop
    return {"host_jpeg": x[0, :, 0], "host_aug": torch.tensor([*box, float(aug.flip)], dtype=torch.float64)}


def decode_batch_on_device(x: dict, *, size: int, device: str, then) -> torch.Tensor:
    """jpeg_decode=device's device_transform, batched: jpeg_rows items {"host_jpeg": (..., T, L), "host_aug":
    (..., 5)} in host memory -> every frame decoded in one decode_jpeg call on `device`, each clip cropped,
    resized and flipped as transform_rgb does in the workers ((..., 3, T, size, size) uint8), then `then`,
    the view's own device step."""
    rows, aug = x["host_jpeg"], x["host_aug"]
    lead, (t, length) = rows.shape[:-2], rows.shape[-2:]
    frames = decode_frames(rows.reshape(-1, length), device)  # (N * T, 3, H, W)
    frames = frames.view(-1, t, *frames.shape[1:]).transpose(1, 2)  # (N, 3, T, H, W)
    augs = [Aug(train=True, crop=unbox(a[:4]), flip=a[4] > 0) for a in aug.view(-1, 5).tolist()]
    out = torch.stack([transform_rgb(clip, a, size=size) for clip, a in zip(frames, augs, strict=True)])
    return then(out.view(*lead, *out.shape[1:]))


def unbox(a: list[float]):
    """jpeg_rows' box encoding -> Aug.crop: (y0, x0, h, w), eval's (p,), or None."""
    return tuple(a) if not math.isnan(a[0]) else None if math.isnan(a[1]) else (a[1],)


def transform_rgb(x: torch.Tensor, aug: Aug, *, size: int) -> torch.Tensor:
    """In the workers: (3, T, H, W) uint8 -> (3, T, size, size) uint8, cropped, resized, flipped with aug."""
    x = crop_resize(x, aug.crop, size)  # crop and resize the bytes: cheaper than floats
    return x.flip(-1) if aug.flip else x


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """On the device, batched: (..., 3, T, H, W) uint8 -> float32 in [0, 1], normalised per channel."""
    return normalize(x.float() / 255, MEAN, STD)


def frames_view(name: str, channels: int, device_step, doc: str):
    """The factory of a view of the video's RGB frames (rgb, lab_l, lab_ab: one signature for the three):
    decoded from the video, or read from the decode-once cache and decoded in the workers or on the
    device; device_step: (..., 3, T, S, S) uint8 -> the model input, on the device."""

    def factory(
        *,
        ctx: ViewContext,
        encoder: str = "small3d",
        width: int | None = None,
        size: int | None = None,
        resolution: list[int] | None = None,
        offset: int = 0,
        cache: bool = False,
        cache_format: str = "jpeg",
        jpeg_quality: int = 90,
        jpeg_decode: str = "auto",
    ) -> View:
        size, resolution = size or ctx.size, list(resolution) if resolution else None
        on_device = jpeg_on_device(ctx, jpeg_decode=jpeg_decode, cache=cache, cache_format=cache_format, view=name)
        stage = (
            rgb_stage(
                cache_format=cache_format,
                jpeg_quality=jpeg_quality,
                resolution=resolution,
                offset=offset,
                unpack=not on_device,
            )
            if cache
            else None
        )
        return View(  # module-level functions bound with partial: the view pickles into spawned workers
            name=name,
            channels=channels,
            decode=None if cache else partial(decode_rgb, offset=offset, resolution=resolution),
            transform=jpeg_rows if on_device else partial(transform_rgb, size=size),  # uint8 crops in the workers
            device_transform=partial(decode_batch_on_device, size=size, device=ctx.device, then=device_step)
            if on_device
            else device_step,
            build_encoder=partial(build_encoder, encoder, in_channels=channels, width=width),
            precompute=stage,  # lab_l and lab_ab read the rgb view's cache, when the settings match
            source=None if cache else f"rgb-video:{resolution}:{offset}",  # one decode for rgb, lab_l, lab_ab
        )

    factory.__doc__, factory.__name__, factory.__qualname__ = doc, name, name
    return factory


rgb = register_view("rgb")(
    frames_view(
        "rgb",
        3,
        normalize_rgb,
        """RGB clip. size: crop size (default data.size); resolution: [H, W] to decode at (default native);
    offset: frames to shift this view's window by (a later clip of the same video is a view of its own);
    cache: read the frames from the decode-once cache (`mvcoding precompute rgb`), stored as cache_format
    (jpeg at jpeg_quality, or raw) at resolution; jpeg_decode: where that JPEG is decoded (auto, workers,
    device).""",
    )
)
