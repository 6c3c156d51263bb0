"""A third-party view plugin: a separate package registering a view through the `mvcoding.views`
entry-point group is found by `mvcoding views` and trains alongside a built-in view."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SYNTHETIC, tiny

REPO = Path(__file__).resolve().parent.parent
DIST = "mvcoding-mygrey"

PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "mvcoding-mygrey"
version = "0.1.0"
dependencies = ["mvcoding"]

[project.entry-points."mvcoding.views"]
mygrey = "mvcoding_mygrey"

[tool.setuptools]
py-modules = ["mvcoding_mygrey"]
"""

MODULE = '''\
"""The grey level of the clip (the mean of R, G and B): a one-channel view."""

import torch

from mvcoding.encoders import build_encoder
from mvcoding.registry import Aug, View, ViewContext, register_view
from mvcoding.transforms import crop_resize
from mvcoding.views.rgb import decode_rgb


@register_view("grey")
def grey(*, ctx: ViewContext, encoder: str = "small3d", width: int | None = None, size: int | None = None) -> View:
    """Grey level (1, T, size, size) in [0, 1]."""
    size = size or ctx.size

    def transform(x: torch.Tensor, aug: Aug) -> torch.Tensor:
        x = crop_resize(x.float().mean(0, keepdim=True) / 255, aug.crop, size)  # the crop shared with rgb
        return x.flip(-1) if aug.flip else x

    return View(
        name="grey",
        channels=1,
        decode=decode_rgb,
        transform=transform,
        build_encoder=lambda: build_encoder(encoder, in_channels=1, width=width),
    )
'''


def pip(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def installed() -> bool:
    """Whether the plugin is installed, asked of a fresh interpreter (not this process's caches)."""
    code = f"import importlib.metadata as m; m.distribution({DIST!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.fixture
def grey_plugin(tmp_path):
    """The plugin package built in tmp_path and pip-installed (non-editable) for the test only."""
    src = tmp_path / "mygrey"
    src.mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "mvcoding_mygrey.py").write_text(MODULE)
    assert not installed(), f"{DIST} is installed already; pip uninstall {DIST}"
    try:
        done = pip("install", "--no-deps", "--no-build-isolation", str(src))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield src
    finally:
        pip("uninstall", "-y", DIST)
    assert not installed(), f"{DIST} is still installed after the test"


def mvcoding(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter, so entry points are looked up anew."""
    return subprocess.run([sys.executable, "-m", "mvcoding", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_a_plugin_view_is_listed_and_trains_with_rgb(grey_plugin, synthetic_root, tmp_path):
    listed = mvcoding("views")
    assert listed.returncode == 0, listed.stderr
    line = next((ln for ln in listed.stdout.splitlines() if ln.split()[0] == "grey"), None)
    assert line is not None, listed.stdout
    assert "mvcoding_mygrey" in line and "encoder=small3d" in line  # where it comes from, its settings
    assert any(ln.split()[0] == "rgb" for ln in listed.stdout.splitlines())

    run = tmp_path / "run"
    over = {"run.dir": run, "train.max_steps": 2, "views.grey.width": 8, "views.rgb.width": 8}
    done = mvcoding("train", SYNTHETIC, *tiny(synthetic_root, **over), "~views.flow")
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and "loss/rgb-grey" in last
    assert [k for k in last if k.startswith("loss/")] == ["loss/rgb-grey"]

    misspelt = mvcoding("train", SYNTHETIC, *tiny(synthetic_root, **{"run.dir": tmp_path / "bad"}),
                        "views.grey.widht=8")  # fmt: skip
    assert misspelt.returncode == 2 and "views.grey.widht" in misspelt.stderr and "width" in misspelt.stderr
