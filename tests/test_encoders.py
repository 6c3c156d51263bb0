"""Contract tests over every registered encoder, plus the first-conv adaptation and pretrained errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvcoding.encoders import adapt_first_conv, build_encoder, list_encoders
from mvcoding.errors import UserError

SPECTROGRAM = {"resnet18"}  # 2D encoders: (B, C, F, T); every other encoder takes video (B, C, T, H, W)


def _input(name: str, channels: int, batch: int = 2) -> torch.Tensor:
    # 8 frames of 32x32 is the smallest clip s3d's pooling stack accepts; the rest take it too.
    shape = (batch, channels, 64, 32) if name in SPECTROGRAM else (batch, channels, 8, 32, 32)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def test_list_encoders_has_the_design_set():
    assert set(list_encoders()) >= {"small3d", "r3d_18", "mc3_18", "r2plus1d_18", "s3d", "resnet18"}
    assert list_encoders() == sorted(list_encoders())


@pytest.mark.parametrize("in_channels", [1, 2, 3])
@pytest.mark.parametrize("name", list_encoders())
def test_encoder_contract(name, in_channels):
    torch.manual_seed(0)
    model = build_encoder(name, in_channels=in_channels)
    assert isinstance(model.feat_dim, int) and model.feat_dim > 0
    z = model(_input(name, in_channels))
    assert z.shape == (2, model.feat_dim)
    assert torch.isfinite(z).all()
    # A random projection, not the sum: the sum's gradient can vanish through BN layers.
    (z * torch.randn_like(z)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient at {pname}"


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(UserError, match="unknown encoder 'r3d18'.*r3d_18.*small3d"):
        build_encoder("r3d18", in_channels=3)


def test_width_sets_small3d_features_and_is_rejected_elsewhere():
    model = build_encoder("small3d", in_channels=3, width=8)
    assert model.feat_dim == 64
    assert model(_input("small3d", 3)).shape == (2, 64)
    with pytest.raises(UserError, match="width"):
        build_encoder("r3d_18", in_channels=3, width=8)


@pytest.mark.parametrize("name", sorted(set(list_encoders()) - {"small3d", "small3d_gn", "r3d_18_gn"}))
def test_pretrained_without_cached_weights_says_what_to_download(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"download https://download\.pytorch\.org/.+\.pth and put it at ") as info:
        build_encoder(name, in_channels=2, pretrained=True)
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)


def test_pretrained_small3d_is_a_user_error():
    with pytest.raises(UserError, match="no pretrained weights"):
        build_encoder("small3d", in_channels=3, pretrained=True)


def test_pretrained_loads_from_the_hub_cache(tmp_path, monkeypatch):
    """A checkpoint in the cache is loaded into the model before the first conv is adapted."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    rgb = build_encoder("resnet18", in_channels=3)
    state = dict(rgb.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # torchvision's head
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    model = build_encoder("resnet18", in_channels=1, pretrained=True)
    assert torch.allclose(model.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, rgb.layer4[1].conv2.weight)


def _randomise(model: nn.Module) -> None:
    """Stand-in for a pretrained state dict: He-init convs (so the input still matters at the output,
    unlike PyTorch's default init through a deep stack) and random BN affine and statistics."""
    g = torch.Generator().manual_seed(0)
    state = dict(model.state_dict())
    for k, v in state.items():
        if not v.is_floating_point():
            continue
        noise = 0.1 * torch.randn(v.shape, generator=g)
        if v.dim() >= 4:  # conv kernels (out, in, *kernel)
            state[k] = torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5
        elif k.endswith("running_var") or (k.endswith(".weight") and v.dim() == 1):
            state[k] = v * (1 + noise.abs())
        elif k.endswith(("running_mean", ".bias")):
            state[k] = v + noise
    model.load_state_dict(state)


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("name", ["small3d", "r2plus1d_18", "s3d", "resnet18"])
def test_inherited_first_conv_keeps_the_response_to_grey(name, in_channels):
    """Sum-over-channels init: a constant grey input gives the RGB model's output exactly."""
    torch.manual_seed(0)
    rgb = build_encoder(name, in_channels=3).eval()
    _randomise(rgb)
    adapted = build_encoder(name, in_channels=3).eval()
    adapted.load_state_dict(rgb.state_dict())
    adapt_first_conv(adapted, in_channels, inherit=True)
    first = next(m for m in adapted.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
    assert first.in_channels == in_channels
    grey = torch.full(_input(name, 1).shape, 0.7)
    with torch.no_grad():
        want = rgb(grey.expand(-1, 3, *grey.shape[2:]))
        got = adapted(grey.expand(-1, in_channels, *grey.shape[2:]))
        other = adapted(_input(name, in_channels))  # a non-grey input gives another response
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())
    assert (other - want).abs().max() > 1e-2 * want.abs().max()


def test_adapt_replaces_only_the_first_conv_of_r2plus1d():
    """r2plus1d_18's stem is two convs (C -> 45, then 45 -> 64); only the first changes."""
    model = build_encoder("r2plus1d_18", in_channels=2)
    assert (model.stem[0].in_channels, model.stem[0].out_channels, model.stem[0].kernel_size) == (2, 45, (1, 7, 7))
    assert model.stem[3].in_channels == 45


def test_adapt_without_inherit_is_random_and_noop_for_same_channels():
    model = build_encoder("small3d", in_channels=3)
    first = model.features[0]
    assert adapt_first_conv(model, 3, inherit=True).features[0] is first
    adapt_first_conv(model, 1, inherit=False)
    assert model.features[0].weight.shape[1] == 1
    assert not torch.allclose(model.features[0].weight, first.weight.sum(dim=1, keepdim=True))


def test_r3d_18_gn_has_groupnorm_only_and_per_sample_features():
    model = build_encoder("r3d_18_gn", in_channels=2).train()  # train mode: BatchNorm would use batch statistics
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds and not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    x = torch.randn(3, 2, 4, 32, 32)
    with torch.no_grad():  # no batch statistics: a clip's features do not depend on the rest of the batch
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="no pretrained weights"):
        build_encoder("r3d_18_gn", in_channels=3, pretrained=True)
