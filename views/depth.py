"""Depth read from the HDF5 cache filled by tools/precompute_depth.py: the `depth` view.

The cache (mvcoding.depth) stores each video as uint8: 0 = invalid, 1..255 linear between the
video's nearest and farthest valid depth. The view feeds the encoder that code divided by 255: a
float in [0, 1] relative to the video (nearest valid depth ~0, farthest 1), so the motion in depth
(approach, recede) keeps its full range whatever the source's units; invalid pixels read 0, like the
zero holes of RGB-D sensors. With source=midas the stored quantity is relative *inverse* depth, so
there 1 is the nearest.
"""

from __future__ import annotations

import torch

from mvcoding.encoders import build_encoder
from mvcoding.registry import Aug, View, ViewContext, register_view
from mvcoding.transforms import crop_resize
from mvcoding.views.flow import open_cache, read_cached


@register_view("depth")
def depth(
    *,
    ctx: ViewContext,
    encoder: str = "small3d",
    width: int | None = None,
    size: int | None = None,
    source: str = "synthetic",
    folder: str | None = None,
    model: str | None = None,
    hub_repo: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    resolution: list[int] | None = None,
    offset: int = 0,
) -> View:
    """Depth (1, T, size, size) in [0, 1] per video (see the module doc), from the cache of
    (source, resolution). source: synthetic (the generator's ground truth), folder (per-frame PNGs
    under `folder`) or midas (`model` from the local torch.hub repo `hub_repo` with the weights file
    `weights`, run on `device` by the precompute tool); resolution: [H, W] the cache holds (null =
    native); offset: frames to shift this view's window by."""
    size = size or ctx.size
    # exactly what tools/precompute_depth.py hands cache_settings (its views.depth), so both find one cache
    settings = {"source": source, "folder": folder, "model": model, "hub_repo": hub_repo, "weights": weights,
                "device": device, "resolution": resolution}  # fmt: skip
    reader, check = open_cache(ctx, "depth", settings)

    def transform(x: torch.Tensor, aug: Aug) -> torch.Tensor:
        x = crop_resize(x, aug.crop, size).float() / 255  # (1, T, size, size); resize the bytes: cheaper
        return x.flip(-1) if aug.flip else x

    return View(
        name="depth",
        channels=1,
        decode=lambda clip: read_cached(reader, clip, offset),
        transform=transform,
        build_encoder=lambda: build_encoder(encoder, in_channels=1, width=width),
        check=check,
    )
