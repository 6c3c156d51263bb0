"""The configuration's types and ranges, in one place, checked before any work is done.

Defaults live in configs/base.yaml (and the dataset/eval groups); this module says what each key may
hold. `check(cfg)` walks SCHEMA and raises UserError naming the first bad key, its value and what is
valid: `train.batch_size='abc' is not valid: an integer >= 1`. The choices of the objective and the
optimiser come from mvcoding.objectives and mvcoding.optim, so they are written once. `views` stays
open: a view's factory checks its own settings (mvcoding.registry.build_view, against the factory's
signature and annotations).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig, ListConfig, OmegaConf

from mvcoding.errors import UserError
from mvcoding.model import HEAD_NORMS
from mvcoding.objectives import BANK_INITS, GRAPHS, NEGATIVES, OBJECTIVES, POSITIVES, SCORES
from mvcoding.optim import OPTIMIZERS, SCHEDULES


@dataclass(frozen=True)
class Rule:
    """ok(value) -> bool, and `valid`, the phrase saying what is valid."""

    ok: Callable[[object], bool]
    valid: str


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def finite(v) -> bool:
    """Whether a number is finite (not nan, inf or -inf; an int always is)."""
    return not isinstance(v, float) or math.isfinite(v)


def integer(lo: int | None = None, hi: int | None = None, *, null: bool = False) -> Rule:
    rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else f" >= {lo}" if lo is not None else ""
    return Rule(
        lambda v: (null and v is None) or (_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)),
        f"an integer{rng}" + (" or null" if null else ""),
    )


def number(lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False, null=False) -> Rule:
    def ok(v) -> bool:
        if null and v is None:
            return True
        if not _num(v) or not finite(v):  # nan, inf (`1e999` reads as inf)
            return False
        above = lo is None or (v > lo if lo_open else v >= lo)
        below = hi is None or (v < hi if hi_open else v <= hi)
        return above and below

    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    if lo is not None and hi is not None:
        rng = f" in {left}{lo}, {hi}{right}"
    elif lo is not None:
        rng = f" {'>' if lo_open else '>='} {lo}"
    else:
        rng = ""
    return Rule(ok, f"a number{rng}" + (" or null" if null else ""))


def choice(*values) -> Rule:
    return Rule(
        lambda v: v in values and type(v) in {type(x) for x in values}, "one of: " + ", ".join(map(str, values))
    )


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
AUTO_BOOL = Rule(lambda v: v == "auto" or isinstance(v, bool), "auto, true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
OPT_TEXT = Rule(lambda v: v is None or (isinstance(v, str) and v != ""), "a non-empty string or null")
DEVICE = Rule(
    lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N"
)
SHARD = Rule(
    lambda v: (
        isinstance(v, str) and re.fullmatch(r"\d+/\d+", v) is not None and int(v.split("/")[0]) < int(v.split("/")[1])
    ),
    "i/n with 0 <= i < n, e.g. 0/4",
)
FRACTIONS = Rule(
    lambda v: isinstance(v, list) and all(_num(x) and 0 < x < 1 for x in v) and v == sorted(v),
    "a sorted list of fractions in (0, 1)",
)
SCALE = Rule(
    lambda v: isinstance(v, list) and len(v) == 2 and all(_num(x) for x in v) and 0 < v[0] <= v[1] <= 1,
    "[lo, hi] with 0 < lo <= hi <= 1",
)
NAMES = Rule(
    lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str) for x in v),
    "a non-empty list of view names",
)
KS = Rule(
    lambda v: isinstance(v, list) and len(v) > 0 and all(_int(x) and x >= 1 for x in v),
    "a non-empty list of integers >= 1",
)
MAX_LR = 1000  # far above any schedule's peak (LARS at batch 64k: ~77); 1e308 overflowed float32 in Adam
LR = Rule(number(0, MAX_LR, lo_open=True).ok, f"a number > 0 and <= {MAX_LR}")
SEED = integer(0, 2**32 - 1)  # numpy's legacy seed (np.random.seed) takes no more
PREDICT = Rule(
    lambda v: v is None or (isinstance(v, dict) and set(v) <= {"source", "target", "loss"}),
    "null or {source: VIEW, target: VIEW, loss: l1|l2}",
)

SCHEMA: dict[str, Rule] = {
    "name": TEXT,
    "seed": SEED,
    "device": DEVICE,
    "resume": OPT_TEXT,
    "checkpoint": OPT_TEXT,
    "run.dir": OPT_TEXT,
    "cache.dir": TEXT,
    "data.frames": integer(1),
    "data.stride": integer(1),
    "data.size": integer(8),
    "data.scale": SCALE,
    "data.flip": BOOL,
    "data.shared_crop": BOOL,
    "data.workers": integer(0),
    "data.prefetch": integer(1),
    "data.pin_memory": AUTO_BOOL,
    "data.start_method": Rule(lambda v: v in (None, "fork", "spawn", "forkserver"), "null, fork, spawn or forkserver"),
    "train.batch_size": integer(1),
    "train.epochs": integer(1),
    "train.max_steps": integer(1, null=True),
    "train.log_every": integer(1),
    "train.save_every": integer(1),
    "train.keep_every": integer(1, null=True),
    "train.amp": choice("auto", "bf16", "off"),
    "train.compile": BOOL,
    "train.channels_last": AUTO_BOOL,
    "train.clip_grad": number(0, lo_open=True, null=True),
    "train.monitor_every": integer(0),
    "train.sync_bn": AUTO_BOOL,
    "objective.name": choice(*OBJECTIVES),
    "objective.graph": choice(*GRAPHS),
    "objective.anchor": TEXT,
    "objective.negatives": choice(*NEGATIVES),
    "objective.score": choice(*SCORES),
    "objective.K": integer(1),
    "objective.tau": number(0, lo_open=True),
    "objective.momentum": number(0, 1),
    "objective.bank_init": choice(*BANK_INITS),
    "objective.positives": choice(*POSITIVES),
    "objective.negative_grad": BOOL,
    "objective.head_norm": choice("auto", *HEAD_NORMS),
    "objective.center": AUTO_BOOL,  # deprecated alias of head_norm (true: center, false: none)
    "objective.dim": integer(1),
    "objective.z_momentum": number(0, 1),
    "objective.predict": PREDICT,
    "optim.name": choice(*OPTIMIZERS),
    "optim.lr": LR,
    "optim.momentum": number(0, 1, hi_open=True),
    "optim.weight_decay": number(0),
    "optim.schedule": choice(*SCHEDULES),
    "optim.warmup_steps": integer(0),
    "optim.milestones": FRACTIONS,
    "optim.gamma": number(0, 1, lo_open=True),
    "log.tensorboard": BOOL,
    "log.wandb": choice(False, "offline", "online"),
    "precompute.workers": integer(0),
    "precompute.shard": SHARD,
    "precompute.videos_per_part": integer(1),
    "precompute.verify": BOOL,
    "dataset.name": TEXT,
    "dataset.root": TEXT,
    "dataset.split": integer(1, 3),
    # the synthetic dataset's float options (datasets/synthetic.py checks the rest when it generates)
    "dataset.generate.fps": number(0, lo_open=True),
    "dataset.generate.noise": number(0, 255),
    "dataset.generate.camera": number(0),
    "dataset.generate.contrast": number(0, 255),
    "eval.views": NAMES,
    "eval.clips": integer(1),
    "eval.crops": choice(1, 3),
    "eval.train_clips": integer(1),
    "eval.batch_size": integer(1),
    "eval.random_init": BOOL,
    "eval.linear.epochs": integer(1),
    "eval.linear.lr": LR,
    "eval.linear.weight_decay": number(0),
    "eval.linear.batch_size": integer(1, null=True),
    "eval.linear.optimizer": choice("sgd", "adam"),
    "eval.finetune.epochs": integer(1),
    "eval.finetune.lr": LR,
    "eval.finetune.backbone_lr_mult": number(0),
    "eval.finetune.dropout": number(0, 1, hi_open=True),
    "eval.finetune.batch_size": integer(1),
    "eval.finetune.optimizer": choice("sgd", "adamw"),
    "eval.finetune.weight_decay": number(0),
    "eval.retrieval.ks": KS,
}


def _get(cfg: DictConfig, key: str):
    """(present, value as plain data) of a dotted key."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    return True, node


def non_finite(node, prefix: str = "") -> tuple[str, float] | None:
    """(key, value) of the first nan or inf anywhere in a config (plain data), or None: no setting can
    use one (a learning rate, a temperature, a noise level, a view's bound: each trains to NaN or zeros)."""
    if isinstance(node, dict):
        items = ((f"{prefix}{k}", v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{prefix[:-1]}[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    for key, value in items:
        if isinstance(value, float) and not math.isfinite(value):
            return key, value
        found = non_finite(value, f"{key}.")
        if found:
            return found
    return None


def check(cfg: DictConfig) -> None:
    """UserError naming the first key whose value breaks SCHEMA (keys a config leaves out are not checked),
    or that holds nan or inf (any key, views' settings and dataset.generate included)."""
    for key, rule in SCHEMA.items():
        present, value = _get(cfg, key)
        if present and not rule.ok(value):
            why = "not a finite number; " if isinstance(value, float) and not math.isfinite(value) else ""
            raise UserError(f"{key}={value!r} is not valid: {why}{rule.valid}")
    found = non_finite(OmegaConf.to_container(cfg, resolve=True))
    if found:
        key, value = found
        raise UserError(f"{key}={value!r} is not valid: not a finite number (nan and inf are never a setting)")
    views = cfg.get("views")
    if views is not None and not isinstance(views, DictConfig):
        shown = OmegaConf.to_container(views) if isinstance(views, ListConfig) else views
        raise UserError(
            f"views={shown!r} is not valid: a mapping of view names to settings ({{rgb: {{}}, flow: {{}}}})"
        )
    if views is not None:
        for name in views:
            settings = views[name]
            if settings is not None and not isinstance(settings, DictConfig):
                raise UserError(
                    f"views.{name}={settings!r} is not valid: a mapping of settings ({{}} for the defaults)"
                )
