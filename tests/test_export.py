"""`mvcoding export`, `mvcoding.load_encoder` and hubconf.py's `cmc_encoder` on a real (one-step) training run:
torchvision's r3d_18 loads the export strictly and computes the same features, the GroupNorm variant
rebuilds as the JSON says, checkpoint and export give the same encoder, the JSON describes it, torch.hub
loads it offline, and the mistakes are one line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

import mvcoding
from conftest import SYNTHETIC, tiny
from mvcoding.cli import main
from mvcoding.config import load_config
from mvcoding.encoders import batchnorm_to_groupnorm, build_encoder
from mvcoding.errors import UserError
from mvcoding.export import load_encoder
from mvcoding.train import train
from mvcoding.views.rgb import MEAN, STD

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(synthetic_root, tmp_path_factory) -> Path:
    """One training step: rgb on torchvision's r3d_18, flow on r3d_18_gn (GroupNorm, 2 input channels)."""
    out = tmp_path_factory.mktemp("export") / "run"
    over = {"run.dir": out, "train.max_steps": 1, "device": "cpu", "views.rgb.encoder": "r3d_18",
            "views.rgb.width": "null", "views.flow.encoder": "r3d_18_gn", "views.flow.width": "null"}  # fmt: skip
    train(load_config(SYNTHETIC, tiny(synthetic_root, **over)))
    return out


@pytest.fixture(scope="module")
def ckpt_path(run) -> Path:
    return run / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def exported(ckpt_path, tmp_path_factory) -> Path:
    """rgb.pt/.json and flow.pt/.json in a folder, written through the CLI."""
    out = tmp_path_factory.mktemp("exported")
    for view in ("rgb", "flow"):
        assert main(["export", str(ckpt_path), "--view", view, "--out", str(out / f"{view}.pt")]) == 0
    return out


def reference(ckpt_path: Path, view: str, encoder: str, in_channels: int) -> torch.nn.Module:
    """mvcoding's own encoder with the checkpoint's weights, built by hand (not through mvcoding.export)."""
    model = build_encoder(encoder, in_channels=in_channels)
    state = torch.load(ckpt_path, weights_only=True)["model"]
    prefix = f"encoders.{view}."
    model.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    return model.eval()


@torch.no_grad()
def same_features(a: torch.nn.Module, b: torch.nn.Module, in_channels: int) -> None:
    x = torch.randn(2, in_channels, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    fa, fb = a(x), b(x)
    assert fa.shape == (2, 512)
    torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-6)


def test_torchvision_r3d_18_loads_the_export_strictly_and_gives_the_same_features(ckpt_path, exported):
    m = torchvision.models.video.r3d_18()
    m.fc = torch.nn.Identity()
    m.load_state_dict(torch.load(exported / "rgb.pt", weights_only=True))  # strict
    m.eval()
    same_features(m, reference(ckpt_path, "rgb", "r3d_18", 3), 3)


def test_the_groupnorm_export_rebuilds_as_its_json_says(ckpt_path, exported):
    state = torch.load(exported / "flow.pt", weights_only=True)
    plain = torchvision.models.video.r3d_18()
    plain.fc = torch.nn.Identity()
    with pytest.raises(RuntimeError):  # BatchNorm's running statistics are missing, the first conv differs
        plain.load_state_dict(state)
    info = json.loads((exported / "flow.json").read_text())
    assert info["norm_layers"] == "group" and info["torchvision"]["plain_model_matches"] is False
    assert "GroupNorm" in info["torchvision"]["differences"]
    # the recipe of the JSON, step by step
    m = torchvision.models.video.r3d_18()
    batchnorm_to_groupnorm(m)
    m.fc = torch.nn.Identity()
    mvcoding.encoders.adapt_first_conv(m, 2, inherit=False)
    m.load_state_dict(state)
    m.eval()
    assert info["torchvision"]["rebuild"].startswith(
        "m = torchvision.models.video.r3d_18(); mvcoding.encoders.batchnorm_to_groupnorm(m); "
        "m.fc = torch.nn.Identity(); mvcoding.encoders.adapt_first_conv(m, 2, inherit=False); m.load_state_dict("
    )
    same_features(m, reference(ckpt_path, "flow", "r3d_18_gn", 2), 2)


def test_load_encoder_from_a_checkpoint_and_from_an_export_agree(run, ckpt_path, exported):
    assert mvcoding.load_encoder is load_encoder
    ref = reference(ckpt_path, "rgb", "r3d_18", 3)
    for source in (ckpt_path, run, exported / "rgb.pt", exported / "rgb.json"):
        enc = load_encoder(source, "rgb")
        assert not any(m.training for m in enc.modules()), source  # eval mode: BatchNorm uses running stats
        assert enc.feat_dim == 512
        same_features(enc, ref, 3)
    flow = load_encoder(exported / "flow.pt")  # an export knows its view
    same_features(flow, reference(ckpt_path, "flow", "r3d_18_gn", 2), 2)
    assert flow.mvcoding_info["encoder"] == "r3d_18_gn"


def test_an_export_without_its_json_is_one_line(exported, tmp_path):
    lone = tmp_path / "rgb.pt"
    shutil.copy(exported / "rgb.pt", lone)
    with pytest.raises(UserError, match=r"rgb.pt is not an mvcoding checkpoint .* with its rgb.json beside it"):
        load_encoder(lone)


def test_the_json_says_what_the_encoder_expects(ckpt_path, exported):
    ckpt = torch.load(ckpt_path, weights_only=True)
    digest = hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    rgb = json.loads((exported / "rgb.json").read_text())
    assert (rgb["view"], rgb["encoder"], rgb["in_channels"], rgb["feat_dim"]) == ("rgb", "r3d_18", 3, 512)
    assert rgb["clip"] == {"frames": 4, "stride": 1, "size": 32}
    assert rgb["input"]["mean"] == list(MEAN) and rgb["input"]["std"] == list(STD)
    assert rgb["settings"] == ckpt["config"]["views"]["rgb"] == {"encoder": "r3d_18", "width": None}
    assert rgb["checkpoint"]["sha256"] == digest and rgb["checkpoint"]["step"] == 1
    assert rgb["mvcoding_version"] == mvcoding.__version__
    assert rgb["norm_layers"] == "batch" and rgb["weights"] == "rgb.pt"
    assert rgb["torchvision"]["model"] == "torchvision.models.video.r3d_18"
    assert rgb["torchvision"]["plain_model_matches"] is True
    flow = json.loads((exported / "flow.json").read_text())
    assert (flow["view"], flow["encoder"], flow["in_channels"], flow["feat_dim"]) == ("flow", "r3d_18_gn", 2, 512)
    assert flow["settings"] == ckpt["config"]["views"]["flow"] and flow["checkpoint"]["sha256"] == digest
    assert "flow" in flow["input"]["text"] and "mean" not in flow["input"]


def test_torch_hub_loads_the_encoder_from_the_local_checkout(ckpt_path, exported):
    ref = reference(ckpt_path, "rgb", "r3d_18", 3)
    enc = torch.hub.load(str(REPO), "cmc_encoder", source="local", checkpoint=str(exported / "rgb.pt"), view="rgb")
    assert not enc.training
    same_features(enc, ref, 3)
    enc = torch.hub.load(str(REPO), "cmc_encoder", source="local", checkpoint=str(ckpt_path))  # view: rgb
    same_features(enc, ref, 3)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_a_view_the_checkpoint_lacks_is_one_line_naming_its_views(capsys, ckpt_path, tmp_path):
    err = one_line_error(capsys, ["export", str(ckpt_path), "--view", "depth", "--out", str(tmp_path / "d.pt")])
    assert "no encoder for view 'depth'" in err and "its views: rgb, flow" in err
    assert not (tmp_path / "d.pt").exists()


@pytest.mark.parametrize("content", ["text", "plain_dict"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(capsys, tmp_path, content):
    bad = tmp_path / "bad.pt"
    if content == "text":
        bad.write_text("hello\n")
    else:
        torch.save({"weight": torch.zeros(2)}, bad)
    err = one_line_error(capsys, ["export", str(bad), "--view", "rgb", "--out", str(tmp_path / "o.pt")])
    assert f"{bad} is not an mvcoding checkpoint" in err


def test_an_unwritable_output_is_one_line(capsys, ckpt_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "rgb.pt"  # a folder that cannot exist: its parent is a file
    err = one_line_error(capsys, ["export", str(ckpt_path), "--view", "rgb", "--out", str(out)])
    assert f"cannot write {out}" in err
    assert blocker.read_text() == "" and not out.with_suffix(".json").exists()
