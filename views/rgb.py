"""RGB frames: the `rgb` view, decoded with decord from the video, or read from a decode-once cache.

With `cache: true` the frames are decoded once at `resolution` by the view's precompute stage
(`mvcoding precompute rgb CONFIG`) and training never opens a video file. cache_format:
  jpeg  each frame JPEG-encoded (quality `jpeg_quality`), stored as one padded byte row per frame
        (a uint32 length, then the bytes): about 8x smaller than raw on UCF101-like frames
  raw   the decoded uint8 frames (lzf-compressed): faster to read, several times larger on disk
BENCHMARKS.md ("RGB cache") has the measurements behind the choice. lab_l and lab_ab with the same
cache settings read the same cache (Precompute.name = "rgb").
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from mvcoding.encoders import build_encoder
from mvcoding.errors import UserError
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


def unpack_jpeg(stored: np.ndarray) -> np.ndarray:
    """(T, 1, 1, L) rows of pack_jpeg -> frames (T, 3, H, W) uint8 RGB."""
    import cv2

    frames = []
    for row in stored[:, 0, 0]:
        n = int(row[:4].view("<u4")[0])
        img = cv2.imdecode(row[4 : 4 + n], cv2.IMREAD_COLOR)
        if img is None:
            raise UserError("a JPEG frame of the rgb cache cannot be decoded; repair it with: mvcoding precompute rgb")
        frames.append(img[..., ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(frames))


def cache_entry(source: Source, *, cache_format: str, quality: int) -> tuple[np.ndarray, dict]:
    """The precompute stage: the video's frames at the stage's resolution, as JPEG rows or raw (T, 3, H, W)."""
    frames = source.frames()  # (T, H, W, 3)
    if cache_format == "raw":
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)), {}
    return pack_jpeg(frames, quality), {"height": frames.shape[1], "width": frames.shape[2]}


def rgb_stage(*, cache_format: str, jpeg_quality: int, resolution, offset: int) -> Precompute:
    """The decode-once stage shared by rgb, lab_l and lab_ab (one cache: name "rgb")."""
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
        unpack=unpack_jpeg if jpeg else None,
    )


def transform_rgb(x: torch.Tensor, aug: Aug, *, size: int) -> torch.Tensor:
    """In the workers: (3, T, H, W) uint8 -> (3, T, size, size) uint8, cropped, resized, flipped with aug."""
    x = crop_resize(x, aug.crop, size)  # crop and resize the bytes: cheaper than floats
    return x.flip(-1) if aug.flip else x


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """On the device, batched: (..., 3, T, H, W) uint8 -> float32 in [0, 1], normalised per channel."""
    return normalize(x.float() / 255, MEAN, STD)


@register_view("rgb")
def rgb(
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
) -> View:
    """RGB clip. size: crop size (default data.size); resolution: [H, W] to decode at (default native);
    offset: frames to shift this view's window by (a later clip of the same video is a view of its own);
    cache: read the frames from the decode-once cache (`mvcoding precompute rgb`), stored as cache_format
    (jpeg at jpeg_quality, or raw) at resolution."""
    size = size or ctx.size
    resolution = list(resolution) if resolution else None
    return View(  # module-level functions bound with partial: the view pickles into spawned workers
        name="rgb",
        channels=3,
        decode=None if cache else partial(decode_rgb, offset=offset, resolution=resolution),
        transform=partial(transform_rgb, size=size),
        device_transform=normalize_rgb,
        build_encoder=partial(build_encoder, encoder, in_channels=3, width=width),
        precompute=rgb_stage(cache_format=cache_format, jpeg_quality=jpeg_quality, resolution=resolution, offset=offset)
        if cache
        else None,  # fmt: skip
        source=None if cache else f"rgb-video:{resolution}:{offset}",  # shared with lab_l, lab_ab
    )
