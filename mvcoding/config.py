"""Configs: a YAML path plus Hydra overrides, composed with Hydra's compose API.

    cfg = load_config("configs/ucf101_rgb_flow.yaml", ["dataset.root=/data/ucf101"])

The config's folder is the Hydra config directory, so its defaults list composes the groups next to
it (dataset/, eval/, ...). The result is in struct mode: a misspelt key is an error naming it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mvcoding.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
TOP_KEYS = {
    "name", "seed", "device", "resume", "checkpoint", "run", "cache", "data", "train",
    "objective", "optim", "precompute", "eval", "views", "dataset",
}  # fmt: skip


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the config file at `path` with `overrides` (key=value strings) and check it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    # a view's settings are checked by its factory (naming the key and the valid ones), so
    # `views.rgb.width=16` may add a setting the YAML file leaves at its default
    overrides = [f"++{o}" if o.startswith("views.") else o for o in overrides]
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass a YAML path such as configs/synthetic_rgb_flow.yaml")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.resolve().parent), version_base=None):
            cfg = compose(config_name=path.stem, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
