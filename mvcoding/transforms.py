"""Pure functions on clip tensors: crops shared by aligned views, flips, normalisation, Lab.

Shapes: a clip is (C, T, H, W); a batch of clips (B, C, T, H, W).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mvcoding.registry import Aug


def sample_aug(rng: np.random.Generator, *, train: bool, scale=(0.4, 1.0), flip: bool = True) -> Aug:
    """Draw one random-resized-crop box (fractions of the frame) and a flip, shared by every view.

    Eval (train=False) returns the centre crop marker (crop=None): each view takes its central square.
    """
    if not train:
        return Aug(train=False, crop=None, flip=False)
    area = rng.uniform(*scale)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    h = min(1.0, math.sqrt(area / ratio))
    w = min(1.0, math.sqrt(area * ratio))
    y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
    return Aug(train=True, crop=(y0, x0, h, w), flip=bool(flip and rng.random() < 0.5))


def crop_box(height: int, width: int, crop) -> tuple[int, int, int, int]:
    """Pixel box (y0, x0, h, w) of a crop on an H x W frame. crop: (y0, x0, h, w) as fractions of the frame;
    (p,): the largest square at p along the long side (0 its start, 0.5 the centre, 1 its end; eval's
    crops, which need no frame size to be named); None: the central square, (0.5,)."""
    if crop is None or len(crop) == 1:
        p, s = 0.5 if crop is None else crop[0], min(height, width)
        return int(p * (height - s)), int(p * (width - s)), s, s
    y0, x0, h, w = crop
    ph, pw = max(1, round(h * height)), max(1, round(w * width))
    return min(round(y0 * height), height - ph), min(round(x0 * width), width - pw), ph, pw


def crop_resize(x: torch.Tensor, crop, size: int) -> torch.Tensor:
    """Crop (C, T, H, W) by a fractional box and resize to (C, T, size, size), bilinear, antialiased.

    uint8 in, uint8 out: resizing the decoded bytes before converting them to float is 3-5x faster
    (torch's vectorised uint8 kernel, channels-last) than resizing float32, for a rounding error of
    at most half a grey level.
    """
    c, t, height, width = x.shape
    y0, x0, h, w = crop_box(height, width, crop)
    x = x[:, :, y0 : y0 + h, x0 : x0 + w]
    if (h, w) == (size, size):
        return x.contiguous()
    cpu_bytes = x.dtype == torch.uint8 and x.device.type == "cpu"
    if cpu_bytes and (c not in (3, 4) or x.stride(0) != 1):  # planes unless channels are innermost (decord's)
        return resize_planes_uint8(x, size)
    y = x.transpose(0, 1)  # (T, C, h, w)
    if cpu_bytes:  # the uint8 kernel's layout; free when channels are innermost (decord's (T, H, W, 3))
        y = y.contiguous(memory_format=torch.channels_last)
    elif x.dtype == torch.uint8:  # other devices have no uint8 kernel: floats, rounded back below
        y = y.float()
    y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    y = y.transpose(0, 1).contiguous()
    return y.round_().clamp_(0, 255).to(torch.uint8) if y.dtype != x.dtype else y


def resize_planes_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, T, h, w) uint8 -> (C, T, size, size) uint8, every plane resized on its own (bilinear, antialiased);
    laid out in memory as x is (a (T, C, H, W)-stored clip comes back (T, C)-ordered: one copy fewer).

    The C x T planes go through torch's vectorised uint8 kernel as images of 4 channels-last planes
    (that kernel takes 3 or 4 channels): the same bytes as resizing (T, C, h, w) frames, and 1.7x faster
    for two-channel flow and for one-channel depth (planes are independent; tools/bench/transforms.py)."""
    c, t, h, w = x.shape
    n = c * t
    frames_first = x.stride(1) > x.stride(0)  # stored (T, C, H, W), as the caches are: planes in that order
    y = x.transpose(0, 1) if frames_first else x
    planes = y.reshape(n, h, w)  # a view of a crop, no copy, when the planes are in memory order
    if n % 4:
        planes = torch.cat([planes, planes.new_zeros(4 - n % 4, h, w)])
    planes = planes.reshape(-1, 4, h, w).contiguous(memory_format=torch.channels_last)
    out = F.interpolate(planes, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = out.contiguous().reshape(-1, size, size)[:n]
    return out.reshape(t, c, size, size).transpose(0, 1) if frames_first else out.reshape(c, t, size, size)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Per-channel (x - mean) / std on (..., C, T, H, W) (channels at dim -4), on x's device."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
    return (x - mean) / std


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (..., 3, T, H, W) or any (..., 3, *) with channels at dim -4, to CIE Lab (D65).

    One batched tensor expression, no per-frame loop. L in [0, 100], a and b roughly in [-110, 110].
    """
    rgb = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    m = torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
        dtype=x.dtype,
        device=x.device,
    )
    xyz = torch.einsum("ij,...jthw->...ithw", m, rgb)
    xyz = xyz / torch.tensor([0.950456, 1.0, 1.088754], dtype=x.dtype, device=x.device).view(3, 1, 1, 1)
    eps = 0.008856
    f = torch.where(xyz > eps, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f.unbind(-4)
    L = torch.where(xyz[..., 1, :, :, :] > eps, 116 * fy - 16, 903.3 * xyz[..., 1, :, :, :])
    return torch.stack([L, 500 * (fx - fy), 200 * (fy - fz)], dim=-4)
