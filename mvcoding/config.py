"""Configs: a YAML path or a packaged config's name, plus Hydra overrides, composed with Hydra's compose API.

    cfg = load_config("configs/ucf101_rgb_flow.yaml", ["dataset.root=/data/ucf101"])
    cfg = load_config("ucf101_rgb_flow", ["dataset.root=/data/ucf101"])  # the packaged configs/ucf101_rgb_flow.yaml

The config's folder is the Hydra config directory, so its defaults list composes the groups next to
it (dataset/, eval/, ...). The result is in struct mode: a misspelt key is an error naming it.
The top-level configs/ folder ships inside the package as `mvcoding.configs` (package data), so names
resolve after a plain `pip install .` from any folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mvcoding.errors import UserError, first_line


def _config_dir() -> Path:
    """The packaged configs (`mvcoding.configs`, mapped to the top-level configs/ folder), else the source tree's."""
    from importlib.resources import files

    try:
        root = files("mvcoding.configs")
        # configs/ has no __init__.py: a namespace package, whose files() is a MultiplexedPath, not a Path
        base = root if isinstance(root, Path) else root.joinpath("base.yaml").parent
        if (Path(base) / "base.yaml").is_file():
            return Path(base)
    except (ImportError, TypeError, ValueError, AttributeError):
        pass
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()
TOP_KEYS = {
    "name", "seed", "device", "resume", "checkpoint", "run", "cache", "data", "train",
    "objective", "optim", "precompute", "eval", "views", "dataset", "log",
}  # fmt: skip


def packaged_configs() -> list[str]:
    """The names of the packaged experiment configs (configs/*.yaml but base), for `load_config(name)`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


def resolve_config(path: str | Path) -> Path:
    """The YAML file of `path`: an existing file, else a packaged config's name (no slash, with or without .yaml)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    text = str(path)
    if text and "/" not in text and "\\" not in text:
        name = text.removesuffix(".yaml")
        if name in packaged_configs() or name == "base":
            return CONFIG_DIR / f"{name}.yaml"
    raise UserError(
        f"config {text!r} not found: not a file and not a packaged config; name one of {', '.join(packaged_configs())} "
        "(e.g. mvcoding train synthetic_rgb_flow) or pass a YAML path such as configs/synthetic_rgb_flow.yaml"
    )


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the config at `path` (a YAML file, or a packaged config's name: `packaged_configs()`) with
    `overrides` (key=value strings) and check it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    path = resolve_config(path)
    # a view's settings are checked by its factory (naming the key and the valid ones), so
    # `views.rgb.width=16` may add a setting the YAML file leaves at its default
    overrides = [f"++{o}" if o.startswith("views.") else o for o in overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.resolve().parent), version_base=None):
            cfg = compose(config_name=path.stem, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        first = first_line(e)
        raise UserError(f"bad config {path} {' '.join(overrides)}: {first}") from e
    finally:
        GlobalHydra.instance().clear()
    check_config(cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def check_config(cfg: DictConfig) -> None:
    """Raise UserError for keys and values the trainer cannot use, naming the key and what is valid
    (types and ranges: mvcoding.schema), and for combinations that cannot work."""
    from mvcoding.schema import check

    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise UserError(f"unknown config key {unknown[0]!r}; valid top-level keys: {', '.join(sorted(TOP_KEYS))}")
    check(cfg)
    views = list(cfg.views or {})
    o = cfg.objective
    if len(views) < 2 and o.name == "cmc":
        raise UserError(f"CMC needs at least 2 views, the config has {views}; add one under views:")
    if o.graph == "core" and o.name == "cmc" and o.anchor not in views:
        raise UserError(f"objective.anchor={o.anchor!r} is not one of the views {views}; set objective.anchor=<view>")


def run_dir(cfg: DictConfig) -> Path:
    """The run directory: run.dir, or runs/<name>-<timestamp>."""
    if cfg.run.dir:
        return Path(cfg.run.dir)
    return Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
