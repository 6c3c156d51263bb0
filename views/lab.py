"""The paper's split of a colour image into lightness and colour: the `lab_l` and `lab_ab` views.

Both decode the same RGB frames as the `rgb` view and convert the whole clip to CIE Lab in one
batched tensor expression (mvcoding.transforms.rgb_to_lab).
"""

from __future__ import annotations

from functools import partial

import torch

from mvcoding.registry import register_view
from mvcoding.transforms import rgb_to_lab
from mvcoding.views.rgb import frames_view

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


def lab_view(name: str, channels: slice, doc: str):
    """The factory of lab_l or lab_ab: the rgb view's settings and frames, Lab `channels` on the device."""
    step = partial(lab_input, channels=channels, lightness=name == "lab_l")
    factory = frames_view(name, channels.stop - channels.start, step, doc)
    factory.__module__ = __name__  # `mvcoding views` names this module as the view's source
    return factory


lab_l = register_view("lab_l")(
    lab_view("lab_l", slice(0, 1), "Lightness L of CIE Lab, (1, T, size, size), scaled to about [-1, 1].")
)
lab_ab = register_view("lab_ab")(
    lab_view("lab_ab", slice(1, 3), "Colour channels a, b of CIE Lab, (2, T, size, size), scaled to about [-1, 1].")
)
