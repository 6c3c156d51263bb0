"""Packaging: the configs ship inside the package (`mvcoding.configs`), so a plain, non-editable install
runs `mvcoding config|train|precompute|eval NAME` from any folder; configs are named or given by path;
`mvcoding config` prints what train would run; one version string; LICENSE and CITATION.cff."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mvcoding
from mvcoding.cli import main
from mvcoding.config import CONFIG_DIR, load_config, packaged_configs
from mvcoding.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "mvcoding", "views", "datasets", "configs"]


def pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


# ---- configs by name -------------------------------------------------------------------------------


def test_a_name_resolves_to_the_packaged_config():
    assert "synthetic_rgb_flow" in packaged_configs() and "base" not in packaged_configs()
    by_name = load_config("synthetic_rgb_flow", ["train.batch_size=7"])
    by_path = load_config(str(CONFIG_DIR / "synthetic_rgb_flow.yaml"), ["train.batch_size=7"])
    assert by_name == by_path and by_name.name == "synthetic_rgb_flow" and by_name.train.batch_size == 7
    assert load_config("synthetic_4view.yaml").name == "synthetic_4view"


def test_a_file_in_the_working_folder_wins_over_the_packaged_name(tmp_path, monkeypatch):
    shutil.copytree(CONFIG_DIR, tmp_path / "configs")
    text = (tmp_path / "configs" / "synthetic_rgb_flow.yaml").read_text()
    (tmp_path / "configs" / "mine.yaml").write_text(text.replace("name: synthetic_rgb_flow", "name: mine"))
    monkeypatch.chdir(tmp_path / "configs")
    assert load_config("mine.yaml").name == "mine"
    with pytest.raises(UserError, match="config 'mine' not found"):
        load_config("mine")  # a bare name is only a packaged config, or a file of that exact name


def test_an_unknown_name_is_one_line_listing_the_packaged_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        load_config("synthetic_rgb_flw")
    message = str(e.value)
    assert "\n" not in message and "'synthetic_rgb_flw' not found" in message
    assert all(name in message for name in packaged_configs())
    with pytest.raises(UserError, match="'configs/nope.yaml' not found"):
        load_config("configs/nope.yaml")  # a path is a path: never looked up by name
    assert main(["train", "synthetic_rgb_flw"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synthetic_rgb_flow" in err, err


# ---- mvcoding config -------------------------------------------------------------------------------


def test_config_prints_the_resolved_config_that_train_would_run(capsys):
    assert main(["config", "synthetic_rgb_flow", "train.batch_size=7", "dataset.root=/data/x"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    expected = load_config("synthetic_rgb_flow", ["train.batch_size=7", "dataset.root=/data/x"])
    assert printed["name"] == "synthetic_rgb_flow" and printed["train"]["batch_size"] == 7
    assert printed["cache"]["dir"] == "/data/x/cache"  # interpolations resolved
    assert "${" not in out
    from omegaconf import OmegaConf

    assert printed == OmegaConf.to_container(expected, resolve=True)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "train.batch_size=0 is not valid: an integer >= 1"),
        ("views.rgb.width=4", "views.rgb: width=4 is not valid for small3d_gn: a multiple of 8"),  # the encoder's
        ("trian.epochs=3", "trian"),
    ],
)
def test_config_fails_as_train_does(override, message, capsys, tmp_path):
    """The same one-line error and exit status 2 as `mvcoding train`, which does no work either."""
    errors = []
    for command in ("config", "train"):
        assert main([command, "synthetic_rgb_flow", f"dataset.root={tmp_path / 'data'}", override]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
        errors.append(captured.err)
    assert errors[0] == errors[1]
    assert not (tmp_path / "data").exists()


# ---- a real, non-editable install ------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project pip-installed (non-editable, no dependencies) from a copy of its sources into a folder."""
    tmp = tmp_path_factory.mktemp("packaging")
    src, target = tmp / "src", tmp / "site"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "install", "--no-deps",
           "--no-build-isolation", "--no-compile", "--target", str(target), str(src)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shutil.rmtree(src)  # nothing may lean on the sources
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_installed_package_carries_its_configs_and_version(installed, tmp_path):
    code = (
        "import mvcoding, mvcoding.config as c, mvcoding.datasets as d, mvcoding.views as v; "
        "print(mvcoding.__file__, d.__file__, v.__file__, c.CONFIG_DIR, mvcoding.__version__, sep='\\n')"
    )
    done = run_installed(installed, tmp_path, "-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    init, datasets, views, config_dir, version = done.stdout.split("\n")[:5]
    pkg = installed / "mvcoding"
    assert Path(init) == pkg / "__init__.py" and Path(datasets) == pkg / "datasets" / "__init__.py"
    assert Path(views) == pkg / "views" / "__init__.py"
    assert Path(config_dir) == pkg / "configs", config_dir  # package data, not the source tree
    assert version == pyproject_version()
    shipped = {p.relative_to(pkg / "configs").as_posix() for p in (pkg / "configs").rglob("*.yaml")}
    in_repo = {p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert shipped == in_repo and any(s.startswith("dataset/") for s in shipped) and "eval/default.yaml" in shipped
    assert list(installed.glob("mvcoding-*.dist-info/licenses/LICENSE")) or list(
        installed.glob("mvcoding-*.dist-info/LICENSE")
    )


def test_the_installed_command_resolves_a_name_from_any_folder(installed, tmp_path):
    done = run_installed(installed, tmp_path, "-m", "mvcoding", "config", "synthetic_rgb_flow", "train.epochs=3")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = yaml.safe_load(done.stdout)
    assert printed["name"] == "synthetic_rgb_flow" and printed["train"]["epochs"] == 3
    assert printed["dataset"]["name"] == "synthetic" and printed["eval"]["linear"]["epochs"] > 0  # the groups
    assert printed["dataset"]["root"] == "data/synthetic"  # relative to the working folder, as documented
    done = run_installed(installed, tmp_path, "-m", "mvcoding", "config", "nope")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "synthetic_rgb_flow" in done.stderr


# ---- one version, license, citation ---------------------------------------------------------------


def test_the_version_is_written_once():
    import importlib.metadata

    assert mvcoding.__version__ == importlib.metadata.version("mvcoding") == pyproject_version()
    hits = [p for p in (REPO / "mvcoding").rglob("*.py") if pyproject_version() in p.read_text()]
    assert hits == [], hits


def test_the_version_without_an_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert mvcoding._version() == "0+unknown"


def test_license_and_citation():
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 the mvcoding authors" in license_text
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["title"] == "Contrastive Multiview Coding"
    assert paper["year"] == 2020 and "ECCV" in paper["conference"]["name"]
    assert "European Conference on Computer Vision" in paper["conference"]["name"]
    names = [(a["family-names"], a["given-names"]) for a in paper["authors"]]
    assert names == [("Tian", "Yonglong"), ("Krishnan", "Dilip"), ("Isola", "Phillip")]
