"""RGB frames decoded with decord: the `rgb` view."""

from __future__ import annotations

from functools import partial

import torch

from mvcoding.encoders import build_encoder
from mvcoding.registry import Aug, Clip, View, ViewContext, register_view
from mvcoding.transforms import crop_resize, normalize
from mvcoding.video import read_frames

MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def decode_rgb(clip: Clip, *, offset: int = 0, resolution=None) -> torch.Tensor:
    """The clip's frames as (3, T, H, W) uint8, decoded by decord (resized on decode when resolution=[H, W])."""
    h, w = resolution if resolution else (-1, -1)
    indices = [min(i + offset, clip.video_frames - 1) for i in clip.frame_indices]
    frames = read_frames(clip.path, indices, width=w, height=h)  # (T, H, W, 3)
    return torch.from_numpy(frames).permute(3, 0, 1, 2)


def transform_rgb(x: torch.Tensor, aug: Aug, *, size: int) -> torch.Tensor:
    """(3, T, H, W) uint8 -> (3, T, size, size) float32: cropped, flipped with aug, normalised."""
    x = crop_resize(x, aug.crop, size).float() / 255  # crop and resize the bytes: cheaper
    if aug.flip:
        x = x.flip(-1)
    return normalize(x, MEAN, STD)


@register_view("rgb")
def rgb(
    *,
    ctx: ViewContext,
    encoder: str = "small3d",
    width: int | None = None,
    size: int | None = None,
    resolution: list[int] | None = None,
    offset: int = 0,
) -> View:
    """RGB clip. size: crop size (default data.size); resolution: [H, W] to decode at (default native);
    offset: frames to shift this view's window by (a later clip of the same video is a view of its own)."""
    size = size or ctx.size
    resolution = list(resolution) if resolution else None
    return View(  # module-level functions bound with partial: the view pickles into spawned workers
        name="rgb",
        channels=3,
        decode=partial(decode_rgb, offset=offset, resolution=resolution),
        transform=partial(transform_rgb, size=size),
        build_encoder=partial(build_encoder, encoder, in_channels=3, width=width),
    )
