"""The paper's split of a colour image into lightness and colour: the `lab_l` and `lab_ab` views.

Both decode the same RGB frames as the `rgb` view and convert the whole clip to CIE Lab in one
batched tensor expression (mvcoding.transforms.rgb_to_lab).
"""

from __future__ import annotations

from functools import partial

import torch

from mvcoding.registry import View, ViewContext, register_view
from mvcoding.transforms import rgb_to_lab
from mvcoding.views.rgb import cached_rgb_view

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
             cache=False, cache_format="jpeg", jpeg_quality=90, jpeg_decode="auto") -> View:  # fmt: skip
    return cached_rgb_view(
        name, channels.stop - channels.start, partial(lab_input, channels=channels, lightness=name == "lab_l"),
        ctx=ctx, encoder=encoder, width=width, size=size, resolution=resolution,
        offset=offset, cache=cache, cache_format=cache_format, jpeg_quality=jpeg_quality, jpeg_decode=jpeg_decode,
    )  # fmt: skip


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
    jpeg_decode: str = "auto",
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
        jpeg_decode=jpeg_decode,
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
    jpeg_decode: str = "auto",
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
        jpeg_decode=jpeg_decode,
    )
