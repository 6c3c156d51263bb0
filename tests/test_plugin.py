"""Third-party view plugins: separate packages registering views through the `mvcoding.views` entry-point
group are found by `mvcoding views` and train alongside a built-in view; one with a precompute stage
(the README's "A view with a precompute stage") is filled by `mvcoding precompute`, passes the cache
contract tests, and needs no edit to mvcoding's own files."""

from __future__ import annotations

import json
import shutil
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

from functools import partial

import torch

from mvcoding.encoders import build_encoder
from mvcoding.registry import Aug, View, ViewContext, register_view
from mvcoding.transforms import crop_resize
from mvcoding.views.rgb import decode_rgb


def to_grey(x: torch.Tensor, aug: Aug, *, size: int) -> torch.Tensor:
    """(3, T, H, W) uint8 -> (1, T, size, size) in [0, 1], with the crop shared with rgb."""
    x = crop_resize(x.float().mean(0, keepdim=True) / 255, aug.crop, size)
    return x.flip(-1) if aug.flip else x


@register_view("grey")
def grey(*, ctx: ViewContext, encoder: str = "small3d", width: int | None = None, size: int | None = None) -> View:
    """Grey level (1, T, size, size) in [0, 1]."""
    return View(
        name="grey",
        channels=1,
        decode=decode_rgb,
        transform=partial(to_grey, size=size or ctx.size),
        build_encoder=partial(build_encoder, encoder, in_channels=1, width=width),
    )
'''


GRADIENT_DIST = "mvcoding-gradient"
GRADIENT_PYPROJECT = (
    PYPROJECT.replace("mvcoding-mygrey", GRADIENT_DIST)
    .replace('mygrey = "mvcoding_mygrey"', 'gradient = "mvcoding_gradient"')
    .replace('py-modules = ["mvcoding_mygrey"]', 'py-modules = ["mvcoding_gradient"]')
)

# the README's example, word for word (tests/test_plugin.py checks that the README shows this module)
GRADIENT_MODULE = '''\
"""Image-gradient magnitude per frame: a one-channel view computed once by its precompute stage."""

from functools import partial

import cv2
import numpy as np
import torch

from mvcoding.encoders import build_encoder
from mvcoding.registry import Aug, Precompute, Source, View, ViewContext, register_view
from mvcoding.transforms import crop_resize


def gradient_magnitude(source: Source, *, scale: float) -> tuple[np.ndarray, dict]:
    """The precompute stage: (T, 1, H, W) uint8 Sobel gradient magnitude of the grey frames, times scale."""
    out = []
    for frame in source.frames():  # (H, W, 3) uint8, decoded once for every cached view of the run
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        mag = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        out.append(np.clip(np.rint(mag * scale), 0, 255).astype(np.uint8))
    return np.stack(out)[:, None], {}


def to_input(x: torch.Tensor, aug: Aug, *, size: int) -> torch.Tensor:
    """Cached (1, T, H, W) uint8 -> (1, T, size, size) float32 in [0, 1], with the crop shared by all views."""
    x = crop_resize(x, aug.crop, size).float() / 255
    return x.flip(-1) if aug.flip else x


@register_view("gradient")
def gradient(
    *,
    ctx: ViewContext,
    encoder: str = "small3d",
    width: int | None = None,
    size: int | None = None,
    scale: float = 0.25,
    resolution: list[int] | None = None,
) -> View:
    """Gradient magnitude (1, T, size, size) in [0, 1], from the cache of (scale, resolution)."""
    stage = Precompute(
        compute=partial(gradient_magnitude, scale=scale),
        settings={"operator": "sobel3", "scale": scale, "dtype": "uint8"},  # what identifies the cache
        resolution=resolution,
    )
    return View(
        name="gradient",
        channels=1,
        decode=None,  # the framework reads the cache
        transform=partial(to_input, size=size or ctx.size),
        build_encoder=partial(build_encoder, encoder, in_channels=1, width=width),
        precompute=stage,
    )
'''


def pip(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def installed(dist: str = DIST) -> bool:
    """Whether the plugin is installed, asked of a fresh interpreter (not this process's caches)."""
    code = f"import importlib.metadata as m; m.distribution({dist!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def install_plugin(src, dist: str, pyproject: str, module: str, text: str):
    """Build the plugin package in `src`, pip-install it (non-editable) and uninstall it afterwards."""
    src.mkdir()
    (src / "pyproject.toml").write_text(pyproject)
    (src / f"{module}.py").write_text(text)
    assert not installed(dist), f"{dist} is installed already; pip uninstall {dist}"
    try:
        done = pip("install", "--no-deps", "--no-build-isolation", str(src))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        yield src
    finally:
        pip("uninstall", "-y", dist)
    assert not installed(dist), f"{dist} is still installed after the test"


@pytest.fixture
def grey_plugin(tmp_path):
    """The plugin package built in tmp_path and pip-installed (non-editable) for the test only."""
    yield from install_plugin(tmp_path / "mygrey", DIST, PYPROJECT, "mvcoding_mygrey", MODULE)


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


@pytest.fixture
def gradient_plugin(tmp_path):
    """The cached-view plugin package built in tmp_path and pip-installed (non-editable) for the test only."""
    yield from install_plugin(tmp_path / "gradient", GRADIENT_DIST, GRADIENT_PYPROJECT, "mvcoding_gradient",
                              GRADIENT_MODULE)  # fmt: skip


def test_the_readme_shows_the_plugins_these_tests_install():
    readme = (REPO / "README.md").read_text()
    assert MODULE.strip() in readme and GRADIENT_MODULE.strip() in readme


@pytest.mark.slow  # ~40 s (5 commands and the cache contract suite); the plugin view that trains stays in make test
def test_a_plugin_view_with_a_precompute_stage_is_filled_checked_and_trained(gradient_plugin, synthetic_root, tmp_path):
    listed = mvcoding("views")
    line = next((ln for ln in listed.stdout.splitlines() if ln.split()[0] == "gradient"), None)
    assert line is not None and line.split()[1] == "cached" and "mvcoding_gradient" in line, listed.stdout

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root, ignore=shutil.ignore_patterns("cache"))
    over = [*tiny(root), "views.gradient={}"]
    missing = mvcoding("train", SYNTHETIC, *over, "~views.flow", f"run.dir={tmp_path / 'r0'}")
    assert missing.returncode == 2 and "mvcoding precompute gradient CONFIG" in missing.stderr, missing.stderr
    filled = mvcoding("precompute", "gradient", SYNTHETIC, *over)
    assert filled.returncode == 0 and "24 entries computed" in filled.stdout, filled.stderr[-2000:]
    status = mvcoding("cache", "status", SYNTHETIC, *over)
    assert any(ln.startswith("gradient") and "complete" in ln and "24/24 filled" in ln
               for ln in status.stdout.splitlines()), status.stdout  # fmt: skip

    run = tmp_path / "run"
    done = mvcoding("train", SYNTHETIC, *over, "~views.flow", f"run.dir={run}", "train.max_steps=2",
                    "views.gradient.width=8", "views.rgb.width=8")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and "loss/rgb-gradient" in last

    # the cache contract tests, run with the plugin installed: they cover every registered cached view
    contract = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cache_contract.py", "-k",
         "gradient"], cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert contract.returncode == 0 and "5 passed" in contract.stdout, contract.stdout[-3000:]
