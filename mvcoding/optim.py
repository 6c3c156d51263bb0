"""One optimiser factory and one learning-rate schedule, shared by pretraining and fine-tuning.

opt = build_optimizer(groups, "sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
sched = LambdaLR(opt, lambda s: lr_factor(s, total, "cosine", warmup_steps=10))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from mvcoding.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def build_optimizer(
    params: Iterable,
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    key: str = "optim.name",
) -> torch.optim.Optimizer:
    """SGD with `momentum`, Adam or AdamW over parameters or parameter groups.

    A group that carries its own "lr" keeps it; `lr` is the default of the others. `key` names the
    config key in the error for an unknown `name`.
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"{key}={name!r} is not valid; choose one of: {', '.join(OPTIMIZERS)}")


def lr_factor(
    step: int,
    total: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
) -> float:
    """The learning-rate multiplier at `step` (0-based) of a run of `total` steps.

    Linear warmup to 1 over the first `warmup_steps` steps, then
    cosine: 0.5 (1 + cos(pi p)), p the fraction of the steps after warmup done (0 from `total` on);
    step: gamma ** (the number of milestones passed), a milestone being a fraction of `total`;
    constant: 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return gamma ** sum(step >= m * total for m in milestones)
    if schedule == "constant":
        return 1.0
    raise UserError(f"optim.schedule={schedule!r} is not valid; choose one of: {', '.join(SCHEDULES)}")
