"""The paper's split of a colour image into lightness and colour: the `lab_l` and `lab_ab` views.

Both decode the same RGB frames as the `rgb` view and convert the whole clip to CIE Lab in one
batched tensor expression (mvcoding.transforms.rgb_to_lab).
"""

from __future__ import annotations

from functools import partial

import torch

from mvcoding.encoders import build_encoder
from mvcoding.registry import View, ViewContext, register_view
from mvcoding.transforms import rgb_to_lab
from mvcoding.views.rgb import decode_rgb, rgb_stage, transform_rgb

# Lab channel statistics used to bring each channel to roughly zero mean, unit scale
L_CENTER, L_SCALE, AB_SCALE = 50.0, 50.0, 110.0


def lab_input(x: torch.Tensor, *, channels: slice, lightness: bool) -> torch.Tensor:
    """On the device, batched: (..., 3, T, H, W) uint8 RGB (transform_rgb's) -> the Lab `channels`
    (..., n, T, H, W) float32; lightness: L centred and scaled, else a, b scaled."""
    lab = rgb_to_lab((x.float() / 255).clamp(0, 1))
    lab = lab.narrow(-4, channels.start, channels.stop - channels.start)  # (..., n, T, H, W)
    if lightness:
        return (lab - L_CENTER) / L_SCALE
    return lab / AB_SCALE


def lab_view(name: str, channels: slice, *, ctx: ViewContext, encoder: str, width, size, resolution, offset,
             cache=False, cache_format="jpeg", jpeg_quality=90) -> View:  # fmt: skip
    size = size or ctx.size
    n = channels.stop - channels.start
    resolution = list(resolution) if resolution else None
    stage = (rgb_stage(cache_format=cache_format, jpeg_quality=jpeg_quality, resolution=resolution, offset=offset)
             if cache else None)  # fmt: skip
    return View(  # module-level functions bound with partial: the view pickles into spawned workers
        name=name,
        channels=n,
        decode=None if cache else partial(decode_rgb, offset=offset, resolution=resolution),
        precompute=stage,  # the rgb view's cache, when the settings match: one cache for all three
        source=None if cache else f"rgb-video:{resolution}:{offset}",
        transform=partial(transform_rgb, size=size),  # uint8 crops in the workers, the same as rgb's
        device_transform=partial(lab_input, channels=channels, lightness=name == "lab_l"),
        build_encoder=partial(build_encoder, encoder, in_channels=n, width=width),
    )


@register_view("lab_l")
def lab_l(
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
    """Lightness L of CIE Lab, (1, T, size, size), scaled to about [-1, 1]."""
    return lab_view(
        "lab_l",
        slice(0, 1),
        ctx=ctx,
        encoder=encoder,
        width=width,
        size=size,
        resolution=resolution,
        offset=offset,
        cache=cache,
        cache_format=cache_format,
        jpeg_quality=jpeg_quality,
    )


@register_view("lab_ab")
def lab_ab(
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
    """Colour channels a, b of CIE Lab, (2, T, size, size), scaled to about [-1, 1]."""
    return lab_view(
        "lab_ab",
        slice(1, 3),
        ctx=ctx,
        encoder=encoder,
        width=width,
        size=size,
        resolution=resolution,
        offset=offset,
        cache=cache,
        cache_format=cache_format,
        jpeg_quality=jpeg_quality,
    )
