"""Encoders: one flat dict of builders, each mapping a view's tensor to features (B, feat_dim).

    build_encoder("r3d_18", in_channels=2)    # flow: (B, 2, T, H, W) -> (B, 512)
    build_encoder("resnet18", in_channels=1)  # log-mel: (B, 1, F, T) -> (B, 512)

Video encoders take (B, C, T, H, W); `resnet18` takes 2D spectrograms (B, C, F, T). Every encoder
has an int attribute `feat_dim`. The torchvision models keep their global pooling, lose their
classifier and get their first convolution rebuilt for `in_channels` (`adapt_first_conv`).
Random init by default; `pretrained=True` reads torchvision's default weights from the local torch
hub cache only (no downloads), so a missing file is a UserError that says what to fetch and where.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models import video as tvv

from mvcoding.errors import UserError
from mvcoding.files import load_weights

# A builder takes (in_channels, pretrained, width) as keywords and returns a module with `feat_dim`.
Builder = Callable[..., nn.Module]


def adapt_first_conv(model: nn.Module, in_channels: int, *, inherit: bool) -> nn.Module:
    """Replace the model's first Conv2d/Conv3d (in `named_modules` order) by one taking `in_channels`.

    Kernel, stride, padding, dilation, bias and output channels are kept. With `inherit`, the new
    kernel is the old one summed over its input channels and shared equally by the new ones
    (for RGB: mean * 3 / in_channels), so an input whose channels are all equal ("grey") gets the
    same response as before: the usual cross-modality init for flow, depth or L from RGB weights.
    Without it the new conv keeps PyTorch's default random init. Modifies `model` and returns it.
    """
    name, old = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Conv3d)), ("", None))
    if old is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d/Conv3d to adapt")
    if old.groups != 1:
        raise ValueError(f"first conv {name!r} is grouped (groups={old.groups}); cannot adapt its input channels")
    if in_channels == old.in_channels:
        return model
    new = type(old)(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    if inherit:
        with torch.no_grad():
            shared = old.weight.sum(dim=1, keepdim=True) / in_channels  # (out, 1, *kernel)
            new.weight.copy_(shared.expand_as(new.weight))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return model


def _cached_state_dict(name: str, weights: tvm.WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's default weights for `name`, read from the torch hub cache; never downloads. Read with
    weights_only=True (mvcoding.files.load_weights): a file there that would run code is refused in one line."""
    filename = os.path.basename(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise UserError(
            f"pretrained weights for encoder {name!r} not found: download {weights.url} and put it at {path} "
            "(the torch hub cache; set TORCH_HOME to move it), or use pretrained=False"
        )
    return load_weights(path, f"the pretrained weights of encoder {name!r}")  # weights_only=True


def _torchvision(
    name: str,
    *,
    in_channels: int,
    pretrained: bool,
    width: int | None,
    ctor: Callable[..., nn.Module],
    weights: tvm.WeightsEnum,
    feat_dim: int,
    norm: str = "batch",
) -> nn.Module:
    """A torchvision classifier turned encoder: head -> Identity, first conv -> `in_channels`;
    norm="group": every BatchNorm replaced by GroupNorm (`batchnorm_to_groupnorm`)."""
    if width is not None:
        raise UserError(f"encoder {name!r} has a fixed width; width={width} applies only to 'small3d'")
    if pretrained and norm == "group":
        raise UserError(
            f"encoder {name!r} has no pretrained weights (torchvision's are for BatchNorm); "
            f"use pretrained=False or encoder {name.removesuffix('_gn')!r}"
        )
    model = ctor(weights=None)
    if norm == "group":
        batchnorm_to_groupnorm(model)
    if pretrained:
        model.load_state_dict(_cached_state_dict(name, weights))
    if hasattr(model, "fc"):  # video ResNets and 2D resnet18: pooling is already global
        model.fc = nn.Identity()
    else:  # S3D: its AvgPool3d((2, 7, 7)) only fits 16x224x224 clips; make it global
        model.avgpool = nn.AdaptiveAvgPool3d(1)
        model.classifier = nn.Identity()
    adapt_first_conv(model, in_channels, inherit=pretrained)
    model.feat_dim = feat_dim
    return model


def batchnorm_to_groupnorm(model: nn.Module, groups: int = 32) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d of `model` by GroupNorm(g, C), g the largest divisor of C up to
    `groups`, with weight 1 and bias 0. In place; returns `model`.

    Why: with BatchNorm, contrastive views can match through batch statistics instead of content,
    and a batch split across processes normalises differently from one process; GroupNorm has neither.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            g = max(d for d in range(1, min(groups, c) + 1) if c % d == 0)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.GroupNorm(g, c, eps=module.eps))
    return model


class FrameDiffConv3d(nn.Conv3d):
    """A Conv3d on a clip (B, C, T, H, W) plus a second kernel (`diff`, same shape, no bias) on its
    frame differences x[t+1] - x[t] (zero at the last frame): conv(x) + diff(dx).

    Same constructor as nn.Conv3d, and `weight` is the kernel on the frames, so `adapt_first_conv`
    rebuilds it for other channel counts (the new `diff` kernel starts random; a static input,
    e.g. constant grey, has dx = 0 and sees `weight` only).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype
        )
        self.diff = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            False,
            padding_mode,
            device,
            dtype,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = torch.cat([x[:, :, 1:] - x[:, :, :-1], torch.zeros_like(x[:, :, :1])], dim=2)
        return super().forward(x) + self.diff(dx)


class Small3d(nn.Module):
    """A small 3D CNN for CPU runs and tests: (B, C, T, H, W) -> (B, 8 * width).

    Four stages of conv3d-norm-ReLU (BatchNorm, or GroupNorm with norm="group") with 3x3x3
    kernels (so every layer sees motion), channels width * (1, 2, 4, 8), one conv in the first two
    stages and two in the last two. Each stage's first conv halves space, and in the last two
    stages also time, so a (C, 8, 64, 64) clip ends as (8 * width, 2, 4, 4) before global average pooling.

    With `temporal_diff` (the default) the first conv is a `FrameDiffConv3d`: a second kernel reads the
    frame differences x[t+1] - x[t] (zero at the last frame). A 3x3x3
    conv can compute that difference itself, but with random init it rarely does early: on the
    synthetic 8-direction dataset a width-16 encoder trained on RGB with labels stayed near chance for
    100+ steps without it and reached 90%+ test accuracy within 150 steps with it.
    """

    def __init__(self, in_channels: int, width: int = 32, norm: str = "batch", temporal_diff: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for mult, stride, depth in [(1, (1, 2, 2), 1), (2, (1, 2, 2), 1), (4, 2, 2), (8, 2, 2)]:
            for i in range(depth):
                c_out = width * mult
                conv = FrameDiffConv3d if temporal_diff and not layers else nn.Conv3d
                layers += [
                    conv(c_in, c_out, kernel_size=3, stride=stride if i == 0 else 1, padding=1, bias=False),
                    nn.BatchNorm3d(c_out) if norm == "batch" else nn.GroupNorm(8, c_out),
                    nn.ReLU(inplace=True),
                ]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feat_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)  # (B, feat_dim)


def _small3d(*, in_channels: int, pretrained: bool, width: int | None, norm: str = "batch") -> nn.Module:
    if pretrained:
        raise UserError("encoder 'small3d' has no pretrained weights; use pretrained=False")
    if width is not None and width < 1:
        raise UserError(f"width={width} is not valid for small3d: a positive integer")
    if norm == "group" and width is not None and width % 8:
        raise UserError(f"width={width} is not valid for small3d_gn: a multiple of 8 (GroupNorm with 8 groups)")
    return Small3d(in_channels, width=32 if width is None else width, norm=norm)


def _tv(
    name: str, ctor: Callable[..., nn.Module], weights: tvm.WeightsEnum, feat_dim: int, norm: str = "batch"
) -> Builder:
    return partial(_torchvision, name, ctor=ctor, weights=weights, feat_dim=feat_dim, norm=norm)


ENCODERS: dict[str, Builder] = {
    "small3d": _small3d,
    # GroupNorm instead of BatchNorm: statistics per sample, so a batch split across processes (or
    # a batch of 2) computes exactly what one process computes on the whole batch
    "small3d_gn": partial(_small3d, norm="group"),
    "r3d_18": _tv("r3d_18", tvv.r3d_18, tvv.R3D_18_Weights.DEFAULT, 512),
    "r3d_18_gn": _tv("r3d_18_gn", tvv.r3d_18, tvv.R3D_18_Weights.DEFAULT, 512, norm="group"),  # the UCF101 configs
    "mc3_18": _tv("mc3_18", tvv.mc3_18, tvv.MC3_18_Weights.DEFAULT, 512),
    "r2plus1d_18": _tv("r2plus1d_18", tvv.r2plus1d_18, tvv.R2Plus1D_18_Weights.DEFAULT, 512),
    "s3d": _tv("s3d", tvv.s3d, tvv.S3D_Weights.DEFAULT, 1024),
    "resnet18": _tv("resnet18", tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, 512),  # 2D, (B, C, F, T)
}


def list_encoders() -> list[str]:
    """Names accepted by `build_encoder`, sorted."""
    return sorted(ENCODERS)


def build_encoder(name: str, *, in_channels: int, pretrained: bool = False, width: int | None = None) -> nn.Module:
    """Build encoder `name` for inputs with `in_channels` channels; the module has an int `feat_dim`.

    Video encoders map (B, C, T, H, W) -> (B, feat_dim); `resnet18` maps (B, C, F, T) -> (B, 512).
    `width` is small3d's base channel count (default 32, feat_dim 8 * width); the torchvision
    encoders have fixed widths. Unknown names and impossible requests raise UserError.
    """
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r}; valid encoders: {', '.join(list_encoders())}")
    if in_channels < 1:
        raise UserError(f"in_channels must be a positive int, got {in_channels}")
    return ENCODERS[name](in_channels=in_channels, pretrained=pretrained, width=width)
