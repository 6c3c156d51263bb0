"""Optical flow read from the HDF5 cache filled by tools/precompute_flow.py: the `flow` view."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mvcoding.cache import CacheReader, cache_settings, dequantize
from mvcoding.encoders import build_encoder
from mvcoding.registry import Aug, Clip, View, ViewContext, register_view
from mvcoding.transforms import crop_box, crop_resize


def read_cached(reader: CacheReader, clip: Clip, offset: int = 0) -> torch.Tensor:
    """The clip's cached frames (C, T, H, W) uint8: one contiguous slice, then the stride."""
    start = min(clip.start + offset, clip.video_frames - 1)
    stop = min(start + (clip.num_frames - 1) * clip.stride + 1, clip.video_frames)
    x = reader.read(clip.video_id, start, stop, clip.stride)  # (T', C, H, W)
    if x.shape[0] < clip.num_frames:  # the offset ran past the end: repeat the last frame
        x = np.concatenate([x, np.repeat(x[-1:], clip.num_frames - x.shape[0], axis=0)])
    return torch.from_numpy(x).permute(1, 0, 2, 3)  # (C, T, H, W)


def fill_command(modality: str) -> str:
    return f"python tools/precompute_{modality}.py CONFIG.yaml dataset.root=... (the same config and overrides)"


def open_cache(ctx: ViewContext, modality: str, settings: dict) -> tuple[CacheReader, Callable]:
    """The reader of the cache that tools/precompute_<modality>.py fills for these settings, and the
    view's `check(records)`: the same cache_settings call as the tool, so both name one cache."""
    path, provenance = cache_settings(
        cache_dir=ctx.cache_dir, dataset=ctx.dataset, modality=modality, settings=settings, root=ctx.root
    )
    reader = CacheReader(path, expect=provenance, fill_command=fill_command(modality))
    return reader, lambda records: reader.check([r.video_id for r in records], fill_command(modality))


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
    (algorithm, resolution); values clipped to +-bound pixels, fed to the encoder as flow / bound."""
    size = size or ctx.size
    settings = {"algorithm": algorithm, "params": params, "resolution": resolution, "bound": bound}
    reader, check = open_cache(ctx, "flow", settings)

    def transform(x: torch.Tensor, aug: Aug) -> torch.Tensor:
        h, w = x.shape[-2:]
        _, _, bh, bw = crop_box(h, w, aug.crop)
        x = crop_resize(x, aug.crop, size)  # on the quantised bytes: dequantising is linear
        x = torch.from_numpy(dequantize(x.numpy(), bound)) / bound  # (2, T, size, size) in [-1, 1]
        x = x * torch.tensor([size / bw, size / bh]).view(2, 1, 1, 1)  # resizing stretches displacements too
        if aug.flip:
            x = x.flip(-1) * torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)
        return x

    return View(
        name="flow",
        channels=2,
        decode=lambda clip: read_cached(reader, clip, offset),
        transform=transform,
        build_encoder=lambda: build_encoder(encoder, in_channels=2, width=width),
        check=check,
    )
