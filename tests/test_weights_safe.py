"""No weights file runs code: a pickle payload at the exact path each weight load reads is refused in one
line and never runs (issue 19: a mutation to weights_only=False at any of these loads survived the tests).

The payload is a state dict with one object whose unpickling calls open(marker, "w"): loaded with
weights_only=False it creates the marker file (test_the_payload_runs_when_loaded_unsafely shows it does);
every load below must refuse it and leave no marker. The loads, each through its real code path:
  torchvision-pretrained encoders  TORCH_HOME/hub/checkpoints/<the weights URL's file name>
  RAFT                             the same folder, views.flow.raft_weights_file
  MiDaS                            views.depth.weights, and what the hub repo's own model constructor reads
                                   from the hub cache (MiDaS_small: its backbone through
                                   torch.hub.load_state_dict_from_url, weights_only=False by default)
"""

from __future__ import annotations

import builtins
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import mvcoding.views.depth as depth_view
import mvcoding.views.flow as flow_view
from mvcoding.encoders import ENCODERS, build_encoder
from mvcoding.errors import UserError


class Payload:
    """Unpickling this calls open(marker, "w"): it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def plant(path: Path, marker: Path) -> Path:
    """Write a weights-looking file (tensors and the payload) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1), "extra": Payload(marker)}, path)
    return path


def refused(info, path: Path | None = None) -> None:
    """The project's one-line refusal: not a plain weights file, naming `path` when given."""
    message = str(info.value)
    assert "\n" not in message and "not a plain weights file" in message, message
    assert "unpickling it would call" in message and "open" in message, message
    if path is not None:
        assert str(path) in message, message


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """TORCH_HOME in tmp_path; the hub cache's checkpoints folder (the same for torch.hub.get_dir())."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub"
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_the_payload_runs_when_loaded_unsafely(tmp_path):
    """The tests below can fail: an unsafe load of the planted file creates the marker."""
    marker = tmp_path / "marker"
    path = plant(tmp_path / "w.pth", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


PRETRAINED = sorted(n for n in ENCODERS if n not in ("small3d", "small3d_gn", "r3d_18_gn"))


@pytest.mark.parametrize("name", PRETRAINED)
def test_a_payload_in_the_hub_cache_is_refused_by_every_pretrained_encoder(name, hub, tmp_path):
    weights = ENCODERS[name].keywords["weights"]  # the torchvision WeightsEnum the builder reads
    path = plant(hub / os.path.basename(weights.url), tmp_path / "marker")
    with pytest.raises(UserError, match=rf"refusing to load the pretrained weights of encoder '{name}'") as info:
        build_encoder(name, in_channels=2, pretrained=True)
    refused(info, path)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", ["raft_small", "raft_large"])
def test_a_payload_as_the_raft_weights_is_refused(name, hub, tmp_path, monkeypatch):
    monkeypatch.setattr(flow_view, "_RAFT", {})  # no model loaded by an earlier test
    from torchvision.models import optical_flow

    weights = {"raft_small": optical_flow.Raft_Small_Weights, "raft_large": optical_flow.Raft_Large_Weights}[name]
    url = weights.DEFAULT.url  # torchvision's file name, in the hub cache
    path = plant(hub / url.rsplit("/", 1)[-1], tmp_path / "marker")
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(UserError, match="refusing to load RAFT weights") as info:
        flow_view.compute_flow(frames, name, device="cpu")
    refused(info, path)
    assert not (tmp_path / "marker").exists()


def test_a_damaged_raft_weights_file_is_one_line(hub, monkeypatch):
    monkeypatch.setattr(flow_view, "_RAFT", {})
    path, _ = flow_view.raft_weights_file("raft_small")
    plant(path, hub / "unused")
    path.write_bytes(path.read_bytes()[:100])  # a partial download
    with pytest.raises(UserError, match="cannot read RAFT weights .*: a damaged or partial file") as info:
        flow_view.compute_flow(np.zeros((2, 32, 32, 3), np.uint8), "raft_small", device="cpu")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


HUBCONF = '''
"""A stand-in MiDaS hub repo: like MiDaS_small, its constructor loads a backbone from the hub cache
itself (through torch.hub.load_state_dict_from_url, whose default is weights_only=False) when it is there."""
import os
import torch

dependencies = ["torch"]
BACKBONE = "https://example.invalid/backbone-0123abcd.pth"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x):  # (B, 3, H, W) -> (B, H, W), as MiDaS
        return self.conv(x)[:, 0]


def MiDaS_small(pretrained=True, **kw):
    net = Net()
    if os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", "backbone-0123abcd.pth")):
        torch.hub.load_state_dict_from_url(BACKBONE, map_location="cpu")
    return net


class _Transforms:
    @staticmethod
    def small_transform(frame):
        return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255


def transforms():
    return _Transforms()
'''


@pytest.fixture
def midas(hub, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(hub repo, weights file): a stand-in MiDaS checkout and valid weights for it."""
    monkeypatch.setattr(depth_view, "_MIDAS", {})  # no model loaded by an earlier test
    repo = tmp_path / "midas"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    weights = tmp_path / "midas_v21_small_256.pt"
    torch.save({"conv.weight": torch.ones(1, 3, 1, 1), "conv.bias": torch.zeros(1)}, weights)
    return repo, weights


def test_the_stand_in_midas_loads(midas):
    """The real loading path works with plain files (so the refusals below are refusals, nothing else)."""
    repo, weights = midas
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    depth = depth_view.midas_depth(frames, model="MiDaS_small", hub_repo=repo, weights=weights, device="cpu")
    assert depth.shape == (2, 8, 8) and not depth.any()  # the weights were loaded: 3 * 0 + 0


def test_a_payload_as_the_midas_weights_is_refused(midas, tmp_path):
    repo, _ = midas
    path = plant(tmp_path / "evil_midas.pt", tmp_path / "marker")
    with pytest.raises(UserError, match=r"refusing to load MiDaS weights \(views.depth.weights\)") as info:
        depth_view.load_midas(repo, "MiDaS_small", path, "cpu")
    refused(info, path)
    assert not (tmp_path / "marker").exists()


def test_a_payload_the_midas_hub_repo_reads_from_the_hub_cache_is_refused(midas, hub, tmp_path):
    repo, weights = midas
    plant(hub / "backbone-0123abcd.pth", tmp_path / "marker")
    with pytest.raises(UserError, match=rf"refusing a file that the MiDaS hub repo {repo} \(MiDaS_small\)") as info:
        depth_view.load_midas(repo, "MiDaS_small", weights, "cpu")
    refused(info)
    assert str(hub) in str(info.value)  # where to look
    assert not (tmp_path / "marker").exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # torch's loads elsewhere are as they were
