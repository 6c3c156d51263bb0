"""The training loop: one readable loop, generic over the batch dict of any number of views.

mvcoding train configs/synthetic_rgb_flow.yaml train.max_steps=50
torchrun --nproc_per_node=2 -m mvcoding train configs/ucf101_rgb_flow.yaml dataset.root=...

`setup` builds a `Run` (device, data, model, objective, optimiser) and restores a checkpoint;
`checkpoint_state` and `restore` are the checkpoint; `train` is the loop, `train_step` one step of
it, `end_of_epoch` what happens after each epoch. The objective (mvcoding.objectives: CMC, the
predictive baseline, supervised) computes its loss from the model, so the loop has no branch on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mvcoding import distributed as dist
from mvcoding.config import lock_run_dir, run_dir
from mvcoding.data import EpochSampler, MultiViewClips, loader_options, make_loader, video_lengths
from mvcoding.datasets import DatasetIndex, load_dataset
from mvcoding.errors import Stopped, UserError
from mvcoding.files import load_safe, save_atomic, write_atomic
from mvcoding.model import HEAD_NORMS, MultiViewModel, build_views, pick_device, sync_batchnorm
from mvcoding.monitor import Monitor, make_monitor, monitor_every
from mvcoding.objectives import CMCObjective, build_objective
from mvcoding.optim import build_optimizer, lr_factor
from mvcoding.registry import View, model_input, to_model

log = logging.getLogger(__name__)


def head_norm_setting(o: DictConfig) -> str:
    """objective.head_norm resolved (none | center | batchnorm: mvcoding.model.MultiViewModel); auto is center
    with a memory bank (mvcoding.model.center_embeddings says why), none otherwise. objective.center, its
    deprecated alias, still counts: true is center, false is none; a UserError if it contradicts head_norm."""
    norm, center = o.get("head_norm", "auto"), o.get("center", "auto")
    if center != "auto":
        if not isinstance(center, bool):
            raise UserError(f"objective.center={center!r} is not valid; drop it and set objective.head_norm")
        alias = "center" if center else "none"
        if norm not in ("auto", alias):
            raise UserError(
                f"objective.center={str(center).lower()} (deprecated: head_norm={alias}) contradicts "
                f"objective.head_norm={norm}; drop objective.center"
            )
        if dist.is_main():
            log.warning("objective.center is deprecated (gone next release); use objective.head_norm=%s", alias)
        norm = alias
    if norm == "auto":
        return "center" if o.name == "cmc" and o.negatives == "memory_bank" else "none"
    if norm not in HEAD_NORMS:
        raise UserError(f"objective.head_norm={norm!r} is not valid; choose auto, {', '.join(HEAD_NORMS)}")
    return norm


def sync_bn_setting(t: DictConfig) -> bool:
    """train.sync_bn resolved: auto is on under torchrun with more than one process."""
    value = t.get("sync_bn", "auto")
    return dist.world_size() > 1 if value == "auto" else bool(value)


def warn_batch_statistics_shortcut(o: DictConfig, model: MultiViewModel) -> None:
    """One warning when BatchNorm encoders train CMC with the positive pair in the batch (in-batch negatives,
    or fresh bank positives): the views can then match through batch statistics instead of their content
    (EXPERIMENTS.md: the original's BatchNorm encoders with fresh positives probed at chance, 7.6%)."""
    if o.name != "cmc" or not (o.negatives == "in_batch" or o.get("positives", "bank") == "fresh"):
        return
    batchnorm = nn.modules.batchnorm._BatchNorm
    bn = [n for n, e in model.encoders.items() if any(isinstance(m, batchnorm) for m in e.modules())]
    if bn and dist.is_main():
        why = "in-batch negatives" if o.negatives == "in_batch" else "objective.positives=fresh"
        log.warning(
            "the encoders of %s have BatchNorm and %s puts each positive pair in the batch: views can match "
            "through batch statistics; use a GroupNorm encoder (*_gn) or objective.positives=bank",
            ", ".join(bn),
            why,
        )


def rng_state() -> dict:
    """The process's RNG states as tensors and plain data (so checkpoints load with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
    return {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


RESUME_KEYS = ("views", "objective", "dataset.name", "dataset.split", "data.frames", "data.size")  # what must match
# What a resumed run keeps from its checkpoint: what is trained (views, objective, data), how (the optimiser,
# whose state holds its lr, the batch, the clipping) and the seed of its data order. How long it trains
# (train.epochs, train.max_steps), where, how often it logs and saves, and on what device may change.
CONTINUE_KEYS = (
    "seed",
    "views",
    "objective",
    "optim",
    "train.batch_size",
    "train.clip_grad",
    "data.frames",
    "data.stride",
    "data.size",
    "data.scale",
    "data.flip",
    "data.shared_crop",
    "dataset.name",
    "dataset.split",
    "dataset.generate",
)


# Settings added after runs were saved without them: the value that trains what such a run trained.
ADDED_SETTINGS = {"objective.negative_grad": True, "objective.positives": "bank", "objective.bank_init": "random"}


def config_difference(saved: dict, cfg: DictConfig) -> str | None:
    """The first of RESUME_KEYS where a saved run's config differs from `cfg` ('objective.K=8, not 16')."""
    found = config_differences(saved, cfg, RESUME_KEYS)
    return f"{found[0][0]}={found[0][1]}, not {found[0][2]}" if found else None


def config_differences(saved: dict, cfg: DictConfig, keys: tuple[str, ...]) -> list[tuple[str, object, object]]:
    """(key, saved value, value now) of every setting under `keys` where a saved config differs from `cfg`
    ("(none)" where one of them lacks it). A setting the saved config lacks because it was added to
    mvcoding later (ADDED_SETTINGS) matches when `cfg` sets it to what the run trained without it."""
    now = OmegaConf.to_container(cfg, resolve=True)

    def get(d, key):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    def flat(v, prefix):
        if isinstance(v, dict):
            return {k: x for key, val in v.items() for k, x in flat(val, f"{prefix}.{key}").items()}
        return {prefix: v}

    found = []
    for key in keys:
        a, b = flat(get(saved, key), key), flat(get(now, key), key)
        for k in sorted(set(a) | set(b)):
            if k not in a and k in ADDED_SETTINGS and b.get(k) == ADDED_SETTINGS[k]:
                continue  # added since the run was saved, set to what that run did without it
            if a.get(k, "(none)") != b.get(k, "(none)"):
                found.append((k, a.get(k, "(none)"), b.get(k, "(none)")))
    return found


def find_resume(cfg: DictConfig, out: Path) -> Path | None:
    """resume=PATH -> PATH; resume=auto -> <run.dir>/checkpoints/last.pt, or (without run.dir) the newest
    runs/<name>-* whose config.yaml matches this config on RESUME_KEYS (UserError naming what differs
    when runs exist but none matches)."""
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(f"resume={cfg.resume}: no checkpoint there; pass a .pt file or a run directory")
        return path
    if cfg.run.dir:
        path = out / "checkpoints" / "last.pt"
        return path if path.is_file() else None
    found = sorted(Path("runs").glob(f"{cfg.name}-*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
    differences = []
    for path in reversed(found):
        try:
            saved = OmegaConf.to_container(OmegaConf.load(path.parent.parent / "config.yaml"), resolve=True)
        except Exception:
            differences.append((path, "its config.yaml cannot be read"))
            continue
        why = config_difference(saved, cfg)
        if why is None:
            return path
        differences.append((path, why))
    if differences:
        path, why = differences[0]
        raise UserError(
            f"resume=auto: no earlier run of {cfg.name!r} matches this config (the newest, {path.parent.parent}, "
            f"has {why}); set run.dir=<that run> to continue it with its own config, or resume=null"
        )
    return None


# --- setup --------------------------------------------------------------------------------------


@dataclass
class Position:
    """Where a run is: optimiser steps done, the current epoch, batches of that epoch done."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    filled: int = 0  # batches of the bank fill pass done (objective.bank_init=fill), before step 0


@dataclass
class Run:
    """Everything a training run holds; built by `setup`."""

    cfg: DictConfig
    out: Path  # the run directory
    device: torch.device
    views: dict[str, View]
    data: MultiViewClips
    sampler: EpochSampler
    loader: DataLoader
    model: MultiViewModel  # the plain model: the checkpoint's "model", the encoders to evaluate
    net: nn.Module  # what the objective calls: the model, DDP-wrapped under torchrun, maybe compiled
    objective: nn.Module  # loss(), update(), its own parameters and state (mvcoding.objectives)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    neg_gen: torch.Generator  # draws the memory-bank negatives
    total: int  # optimiser steps of the whole run
    steps_per_epoch: int
    amp: bool  # bf16 autocast
    channels_last: bool
    monitor: Monitor | None = None  # the kNN monitor, on rank 0 when train.monitor_every > 0

    @property
    def params(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), *self.objective.parameters()]


def start_process(cfg: DictConfig) -> torch.device:
    """The process group under torchrun, this process's device (its own GPU) and the seeds."""
    device = pick_device(cfg.device)
    dist.init_from_env(device)
    if device.type == "cuda" and dist.world_size() > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    return device


def build_data(
    cfg: DictConfig, views: dict[str, View], device: torch.device
) -> tuple[DatasetIndex, MultiViewClips, EpochSampler, DataLoader]:
    """(index, data, sampler, loader) of the training split; each rank loads its part of every global batch."""
    index = load_dataset(cfg.dataset)
    records = index.records("train")
    for view in views.values():
        if view.check is not None:
            view.check(records)
    lengths = video_lengths(records, cfg) if dist.is_main() else None
    dist.barrier()
    lengths = lengths or video_lengths(records, cfg)
    data = MultiViewClips(
        records,
        views,
        lengths,
        frames=cfg.data.frames,
        stride=cfg.data.stride,
        train=True,
        scale=cfg.data.scale,
        flip=cfg.data.flip,
        seed=cfg.seed,
        shared_crop=cfg.data.shared_crop,
    )
    b, world = cfg.train.batch_size, dist.world_size()
    if len(data) < b * world:
        raise UserError(f"train.batch_size={b} x {world} processes exceeds the {len(data)} training videos")
    sampler = EpochSampler(len(data), seed=cfg.seed, shuffle=True, rank=dist.rank(), world=world, batch_size=b)
    loader = make_loader(data, sampler, batch_size=b, drop_last=True, **loader_options(cfg.data, device))
    return index, data, sampler, loader


def wrap_model(run: Run) -> nn.Module:
    """The module the objective calls: DistributedDataParallel under torchrun; compiled with train.compile.

    With train.sync_bn (auto: under torchrun) run.model's BatchNorm layers first turn, in place, into ones
    that normalise with the global batch's statistics, so N processes train as one with the global batch
    does; names, parameters and buffers stay, so the checkpoint's keys are those of one process.
    """
    net = run.model
    if sync_bn_setting(run.cfg.train):
        sync_batchnorm(net, device=run.device)
    if dist.world_size() > 1:
        net = nn.parallel.DistributedDataParallel(
            net,
            device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=not run.objective.uses_whole_model,  # e.g. supervised: one encoder, no head
        )
    return torch.compile(net) if run.cfg.train.compile else net


def setup(cfg: DictConfig, held: contextlib.ExitStack | None = None) -> tuple[Run, Position]:
    """Build the run of `cfg` and restore its checkpoint when resuming; returns the run and where it stands.
    With `held` (train's), rank 0 locks the run directory until `held` closes (config.lock_run_dir)."""
    device = start_process(cfg)
    out = run_dir(cfg)
    resume_path = find_resume(cfg, out)
    if resume_path is not None and not cfg.run.dir:
        out = resume_path.parent.parent
    out = Path(dist.broadcast_object(str(out)))
    if held is not None and dist.is_main():
        held.enter_context(lock_run_dir(out, "training run"))

    views = build_views(cfg)  # first: a misspelt view setting or an impossible encoder fails before any data work
    model = MultiViewModel(views, cfg.objective.dim, head_norm=head_norm_setting(cfg.objective)).to(device)
    warn_batch_statistics_shortcut(cfg.objective, model)
    index, data, sampler, loader = build_data(cfg, views, device)
    steps_per_epoch = len(data) // (cfg.train.batch_size * dist.world_size())
    total = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf)

    channels_last = cfg.train.channels_last == "auto" and device.type == "cuda" or cfg.train.channels_last is True
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    objective = build_objective(
        cfg.objective,
        list(views),
        model,
        n_data=len(data),
        sample_item=model_item(views, data[0]),
        num_classes=len(index.classes),
    ).to(device)
    o = cfg.optim
    params = [*model.parameters(), *objective.parameters()]
    optimizer = build_optimizer(params, o.name, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, o.schedule, o.warmup_steps, o.milestones, o.gamma)
    )
    amp = (cfg.train.amp == "auto" and device.type == "cuda") or cfg.train.amp == "bf16"
    run = Run(
        cfg=cfg,
        out=out,
        device=device,
        views=views,
        data=data,
        sampler=sampler,
        loader=loader,
        model=model,
        net=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        neg_gen=torch.Generator().manual_seed(cfg.seed + 1),
        total=total,
        steps_per_epoch=steps_per_epoch,
        amp=amp,
        channels_last=channels_last,
    )

    run.monitor = make_monitor(cfg, views) if monitor_every(cfg) and dist.is_main() else None
    pos = restore(run, resume_path) if resume_path is not None else Position()
    run.net = wrap_model(run)  # after restore: every rank holds the checkpoint's weights
    if dist.is_main():
        try:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {out / 'checkpoints'} ({e.strerror or e}); choose another run.dir") from e
        drop_metrics_after(out / "metrics.jsonl", pos.step)  # a resumed run logs the later steps again
        save_config(cfg, out)
        log.info(
            "run directory %s: %d videos, %d steps/epoch, %d steps, objective %s, device %s, %d process(es)",
            out,
            len(data),
            steps_per_epoch,
            total,
            cfg.objective.name,
            device,
            dist.world_size(),
        )
    return run, pos


# --- checkpoint state ---------------------------------------------------------------------------


def checkpoint_state(run: Run, pos: Position) -> dict:
    """Everything a resumed run needs to continue exactly, plus the resolved config and the views."""
    return {
        "model": run.model.state_dict(),
        "objective": run.objective.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "neg_gen": run.neg_gen.get_state(),
        "rng": rng_state(),
        "step": pos.step,
        "epoch": pos.epoch,
        "batch_in_epoch": pos.batch_in_epoch,
        "filled": pos.filled,
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        "views": list(run.views),
    }


def save_checkpoint(run: Run, pos: Position) -> None:
    """<run>/checkpoints/last.pt, written by rank 0 (atomically: a killed run keeps the previous one); with
    train.keep_every=N, every N-th step's checkpoint is also kept as checkpoints/step-<step>.pt."""
    if dist.is_main():
        last = run.out / "checkpoints" / "last.pt"
        save_atomic(checkpoint_state(run, pos), last)
        keep = run.cfg.train.get("keep_every")
        if keep and pos.step % keep == 0:
            kept = last.with_name(f"step-{pos.step:08d}.pt")
            try:  # no copy: the file is never written again (the next save replaces last.pt)
                write_atomic(kept, lambda tmp: os.link(last, tmp))
            except UserError:
                save_atomic(checkpoint_state(run, pos), kept)  # a filesystem without hard links


def restore(run: Run, path: Path) -> Position:
    """Load the checkpoint at `path` into `run` (and the process's RNGs); returns its position."""
    try:
        ckpt = load_safe(path)  # on the CPU: load_state_dict moves to the device
    except UserError:
        raise
    except Exception as e:  # truncated, damaged, or not a torch file
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(
            f"resume={run.cfg.resume}: cannot read the checkpoint {path} ({why}); it is damaged or not a "
            "checkpoint: pass another one, or start a new run (resume=null)"
        ) from e
    needed = ("model", "objective", "optimizer", "scheduler", "neg_gen", "rng", "step", "epoch", "batch_in_epoch")
    lacking = [k for k in needed if not isinstance(ckpt, dict) or k not in ckpt]
    if lacking:
        raise UserError(
            f"resume={run.cfg.resume}: {path} is not an mvcoding training checkpoint (it has no {lacking[0]!r}); "
            "pass the checkpoints/last.pt of a run, or start a new run (resume=null)"
        )
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    trained = (saved.get("objective") or {}).get("name")
    if trained != run.cfg.objective.name:
        raise UserError(
            f"resume={run.cfg.resume}: {path} was trained with objective.name={trained}, not "
            f"{run.cfg.objective.name}; resume with that objective or start a new run (resume=null)"
        )
    changed = config_differences(saved, run.cfg, CONTINUE_KEYS) if saved else []
    if changed:
        shown = changed[:4] + ([("...", "", "")] if len(changed) > 4 else [])
        was = ", ".join(f"{k}={a}" if k != "..." else k for k, a, _ in shown)
        now = ", ".join(f"{k}={b}" if k != "..." else k for k, _, b in shown)
        raise UserError(
            f"resume={run.cfg.resume}: {path} was trained with {was}, not {now}; a resumed run keeps the "
            "settings it was trained with (its optimiser state holds them): drop those overrides to continue it, "
            "or start a new run in another run.dir (resume=null)"
        )
    try:
        run.model.load_state_dict(ckpt["model"])
        run.objective.load_state_dict(ckpt["objective"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:160]
        raise UserError(
            f"resume={run.cfg.resume}: {path} does not fit this config ({reason}); resume with the "
            "config it was trained with or start a new run (resume=null)"
        ) from e
    try:
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.neg_gen.set_state(ckpt["neg_gen"])
        set_rng_state(ckpt["rng"])
        pos = Position(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]))
        # a checkpoint from before the fill pass existed, or one past step 0, has its bank filled by training
        pos.filled = int(ckpt["filled"]) if pos.step == 0 and "filled" in ckpt else fill_batches(run)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:
        raise UserError(f"resume={run.cfg.resume}: {path} is damaged ({type(e).__name__}: {e}); start a new run") from e
    if dist.is_main():
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, pos.step, pos.epoch, pos.batch_in_epoch)
    return pos


def drop_metrics_after(path: Path, step: int) -> None:
    """Keep the records of metrics.jsonl up to `step`: a run that starts at `step` (0: a new run, or a
    resume=auto whose first checkpoint was never saved) logs the later steps again, so each step is in the
    file once. A line that does not parse (a torn last line: what a kill mid-write leaves) is dropped."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); move it away to start its log afresh") from e
    keep, torn = [], 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
            at = record.get("step", 0)
        except (ValueError, AttributeError):
            torn += bool(line.strip())
            continue
        if not isinstance(at, int | float) or at <= step:
            keep.append(line)
    if torn:
        log.warning("dropped %d unreadable line(s) of %s (a run killed while writing it)", torn, path)
    new = "".join(f"{line}\n" for line in keep)
    if new != text:
        write_atomic(path, lambda tmp: tmp.write_text(new))


def save_config(cfg: DictConfig, out: Path) -> None:
    """<out>/config.yaml: this invocation's config; the one it replaces, when different (a resume with a
    longer train.max_steps, another device), is kept as config-<n>.yaml (n = 1, 2, ...: the run's earlier
    settings in order), so the run's history of settings stays."""
    path, text = out / "config.yaml", OmegaConf.to_yaml(cfg)
    try:
        old = path.read_text(errors="replace")
    except OSError:
        old = None
    if old is not None and old != text:
        numbers = [int(p.stem[7:]) for p in out.glob("config-*.yaml") if p.stem[7:].isdigit()]
        write_atomic(out / f"config-{max(numbers, default=0) + 1}.yaml", lambda tmp: tmp.write_text(old))
    write_atomic(path, lambda tmp: tmp.write_text(text))


class StopOnSignal:
    """SIGTERM and SIGINT set a flag that the loop reads after each step (every rank agrees on it), so a
    run saves its checkpoint at the current step and stops; a second signal stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def __enter__(self) -> StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.signum:  # the second one: do not wait for the step to end
            signal.signal(signum, self.previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, device: torch.device, step: int, every: int) -> int:
        """The signal number to stop on (0: go on), the same on every rank. One process reads its flag at
        every step; under torchrun the ranks agree through an all-reduce (a device sync) every `every` steps."""
        if not dist.is_dist():
            return self.signum
        if step % every:
            return 0
        flag = torch.tensor([self.signum], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# --- the loop -----------------------------------------------------------------------------------


def train(cfg: DictConfig) -> Path:
    """Pretrain the encoders of `cfg.views` with the configured objective; returns the run directory
    (locked while the run writes it: a second run on it is a UserError)."""
    with contextlib.ExitStack() as held:
        run, pos = setup(cfg, held)
        logger = MetricsLogger(run.out, cfg, run.steps_per_epoch) if dist.is_main() else None
        with StopOnSignal() as stop:
            if pos.filled < fill_batches(run):
                fill_banks(run, pos, stop)
            loop(run, pos, logger, stop)
        if monitor_every(cfg) and pos.batch_in_epoch:  # stopped inside an epoch (train.max_steps): score the end
            score_knn(run, pos, logger)
        if logger:
            logger.close()
        dist.barrier()
    dist.cleanup()
    return run.out


def loop(run: Run, pos: Position, logger: MetricsLogger | None, stop: StopOnSignal) -> None:
    """Steps until run.total (pos advances in place); on SIGTERM/SIGINT, a checkpoint and Stopped."""
    cfg = run.cfg
    b, global_b = cfg.train.batch_size, cfg.train.batch_size * dist.world_size()
    keep = cfg.train.get("keep_every")
    t_last, wait, n_clips = time.perf_counter(), 0.0, 0
    while pos.step < run.total:
        run.model.train()  # again each epoch: per-epoch work may have evaluated the encoders
        run.objective.train()
        run.data.epoch = pos.epoch
        run.sampler.set_epoch(pos.epoch, skip=pos.batch_in_epoch * b)
        if logger:
            logger.progress(pos.epoch, pos.batch_in_epoch)
        t_fetch = time.perf_counter()
        for batch in run.loader:
            wait += time.perf_counter() - t_fetch
            loss, stats = train_step(run, to_device(run, batch), pos)
            pos.step, pos.batch_in_epoch, n_clips = pos.step + 1, pos.batch_in_epoch + 1, n_clips + global_b
            if pos.step % cfg.train.log_every == 0 or pos.step == run.total:
                now = time.perf_counter()
                record = step_record(run, pos, loss, stats, n_clips / (now - t_last), wait / (now - t_last))
                if logger:
                    logger.log(record)
                t_last, wait, n_clips = now, 0.0, 0
            if pos.step % cfg.train.save_every == 0 or pos.step == run.total or (keep and pos.step % keep == 0):
                save_checkpoint(run, pos)
            if signum := stop.requested(run.device, pos.step, cfg.train.log_every):
                if pos.step % cfg.train.save_every and pos.step != run.total:
                    save_checkpoint(run, pos)
                if logger:
                    logger.close()
                name = signal.Signals(signum).name
                raise Stopped(
                    f"stopped by {name} at step {pos.step}: checkpoint saved to {run.out}/checkpoints/last.pt; "
                    f"continue with the same command and resume=auto run.dir={run.out}",
                    128 + signum,
                )
            if pos.step >= run.total:
                break
            t_fetch = time.perf_counter()
        if pos.step < run.total or pos.batch_in_epoch == run.steps_per_epoch:  # the epoch ran to its end
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
            end_of_epoch(run, pos, logger)


FILL_EPOCH = 2**20  # the fill pass's clip sampling seed: an epoch number no run reaches


def fill_batches(run: Run) -> int:
    """Batches of the bank fill pass: every training item once (the last global batch padded); 0 without one."""
    if not getattr(run.objective, "needs_fill", False):
        return 0
    return -(-len(run.data) // (run.cfg.train.batch_size * dist.world_size()))


@torch.no_grad()
def fill_banks(run: Run, pos: Position, stop: StopOnSignal) -> None:
    """objective.bank_init=fill: one no-grad pass of the model (in training mode, so the embeddings are
    made as the training steps make them) over every training item, writing each into the memory banks.

    Resumable: pos.filled counts the batches done; a checkpoint every train.save_every batches, at the
    end and on SIGTERM/SIGINT holds the banks so far, and a resumed run continues the pass there.
    """
    cfg, b, total = run.cfg, run.cfg.train.batch_size, fill_batches(run)
    sampler = EpochSampler(
        len(run.data), seed=cfg.seed, shuffle=False, rank=dist.rank(), world=dist.world_size(), batch_size=b, pad=True
    )
    sampler.set_epoch(0, skip=pos.filled * b)
    loader = make_loader(run.data, sampler, batch_size=b, drop_last=True, **loader_options(cfg.data, run.device))
    run.model.train()
    run.data.epoch = FILL_EPOCH  # clips and crops of their own, not those of epoch 0
    t0 = time.perf_counter()
    bar = None
    if dist.is_main():
        log.info("filling the memory banks: %d batches of %d clips (objective.bank_init=fill)", total - pos.filled, b)
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=total, initial=pos.filled, desc="bank fill", unit="batch", file=sys.stderr, leave=False)
    for batch in loader:
        batch = to_device(run, batch)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
            z = run.net(batch)  # {view: (B, D)}
        run.objective.fill({n: v.float() for n, v in z.items()}, batch["index"])
        pos.filled += 1
        if bar is not None:
            bar.update(1)
        if pos.filled % cfg.train.save_every == 0 or pos.filled == total:
            save_checkpoint(run, pos)
        if signum := stop.requested(run.device, pos.filled, cfg.train.log_every):
            save_checkpoint(run, pos)
            raise Stopped(
                f"stopped by {signal.Signals(signum).name} during the bank fill ({pos.filled}/{total} batches): "
                f"checkpoint saved to {run.out}/checkpoints/last.pt; continue with the same command and "
                f"resume=auto run.dir={run.out}",
                128 + signum,
            )
    if bar is not None:
        bar.close()
    if dist.is_main():
        log.info("memory banks filled in %.1f s", time.perf_counter() - t0)


def model_item(views: dict[str, View], item: dict) -> dict:
    """One dataset item as the model sees it (device transforms applied on the CPU): shapes for the objective."""
    return {k: model_input(views[k], v) if k in views else v for k, v in item.items()}


def to_device(run: Run, batch: dict) -> dict:
    """The batch's views (through their device_transform), "index" and "label" on the run's device; 5-D
    views channels_last when set."""
    out = {}
    for name, view in run.views.items():
        x = to_model(view, batch[name], run.device)
        out[name] = x.to(memory_format=torch.channels_last_3d) if run.channels_last and x.dim() == 5 else x
    return out | {k: batch[k].to(run.device, non_blocking=True) for k in ("index", "label")}


def train_step(run: Run, batch: dict, pos: Position) -> tuple[Tensor, dict[str, float]]:
    """One optimiser step on a batch on the device: the objective's loss, backward, step, its update."""
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        loss, stats = run.objective.loss(run.net, batch, run.neg_gen)
    if not torch.isfinite(loss):
        save_checkpoint(run, pos)  # the state before this step is the last good one
        bad = [k for k, v in stats.items() if k.startswith("loss/") and not math.isfinite(v)] or ["total"]
        raise UserError(
            f"loss is {loss.item()} at step {pos.step} (pair {bad[0][5:]}); the last good state is in "
            f"{run.out}/checkpoints/last.pt; lower optim.lr or set train.clip_grad"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(run.objective.parameters())  # DDP averages the model's, not the decoder's or classifier's
    if run.cfg.train.clip_grad:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.clip_grad)
    run.optimizer.step()
    run.scheduler.step()
    run.objective.update()  # after the step: the backward pass read the memory banks
    return loss, stats


def end_of_epoch(run: Run, pos: Position, logger: MetricsLogger | None) -> None:
    """After each whole epoch (pos.epoch is the next one): a checkpoint, then per-epoch work on
    run.model and run.views (the kNN monitor), logged with `logger` on rank 0."""
    save_checkpoint(run, pos)
    every = monitor_every(run.cfg)
    if every and (pos.epoch % every == 0 or pos.step == run.total):
        score_knn(run, pos, logger)


def score_knn(run: Run, pos: Position, logger: MetricsLogger | None) -> None:
    """The kNN monitor's test top-1 per view as one metrics record, on rank 0 (the other ranks wait)."""
    if run.monitor is not None:
        logger.log({"step": pos.step, "epoch": pos.epoch, **run.monitor(run.model.encoders, run.device)})
    dist.barrier()


def step_record(run: Run, pos: Position, loss: Tensor, stats: dict, clips_per_s: float, data_wait: float) -> dict:
    """One metrics.jsonl line; called on every rank (the mean loss and the bank check are collectives)."""
    # the mean over ranks of the loss and of every statistic (each rank's are of its own anchors):
    # one collective and one CPU-GPU sync per log line
    names = list(stats)
    means = dist.all_reduce_mean(
        torch.stack(
            [loss.detach().float().reshape(()), *(torch.tensor(float(stats[k]), device=loss.device) for k in names)]
        )
    ).tolist()
    record = {
        "step": pos.step,
        "epoch": pos.epoch,
        "loss": means[0],
        **dict(zip(names, means[1:], strict=True)),
        "lr": run.scheduler.get_last_lr()[0],
        "clips_per_s": clips_per_s,
        "data_wait": data_wait,
    }
    if dist.world_size() > 1 and isinstance(run.objective, CMCObjective) and run.objective.negatives == "memory_bank":
        record["bank_max_diff"] = bank_divergence(run.objective)
    return record


def average_gradients(params) -> None:
    """Average the gradients of `params` over ranks in place; nothing in one process."""
    if dist.world_size() > 1:
        for p in params:
            if p.grad is not None:
                p.grad.copy_(dist.all_reduce_mean(p.grad))


def bank_divergence(objective: CMCObjective) -> float:
    """Largest difference between ranks of two checksums of every memory bank (0.0: all ranks agree)."""
    sums = []
    for bank in objective.banks.buffers():
        weights = torch.arange(bank.shape[0], device=bank.device, dtype=torch.float64)[:, None]
        sums += [bank.double().sum(), (bank.double() * weights).sum()]
    every = dist.all_gather_cat(torch.stack(sums)[None])  # (world, 2 * views)
    return (every - every[0]).abs().max().item()


class MetricsLogger:
    """metrics.jsonl always, a PNG of the curves at the end, and the loggers the config asks for:
    log.tensorboard (event files in <run>/tb) and log.wandb (offline: files in <run>/wandb; online).
    On a terminal a tqdm bar per epoch shows the loss and clips/s; elsewhere each record is a log line."""

    def __init__(self, out: Path, cfg: DictConfig | None = None, steps_per_epoch: int = 0):
        self.out = out
        try:
            self.file = open(out / "metrics.jsonl", "a")  # noqa: SIM115  (append: a resumed run continues it)
        except OSError as e:
            raise UserError(f"cannot write {out / 'metrics.jsonl'} ({e.strerror or e}); choose another run.dir") from e
        opts = (cfg.get("log") if cfg is not None else None) or {}
        self.tb = self.wandb = self.bar = None
        if opts.get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UserError("log.tensorboard=true needs TensorBoard: pip install 'mvcoding[tensorboard]'") from e
            self.tb = SummaryWriter(str(out / "tb"))
        if opts.get("wandb"):
            try:
                import wandb
            except ImportError as e:
                msg = f"log.wandb={opts['wandb']} needs Weights & Biases: pip install 'mvcoding[wandb]'"
                raise UserError(msg) from e
            self.wandb = wandb.init(
                project="mvcoding",
                name=out.name,
                dir=str(out),
                mode=opts["wandb"],
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        self.steps_per_epoch = steps_per_epoch
        self.tty = sys.stderr.isatty() and steps_per_epoch > 0

    def progress(self, epoch: int, done: int) -> None:
        """A new bar for `epoch` (on a terminal), `done` of its steps already behind it (a resume)."""
        if self.tty:
            from tqdm import tqdm

            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(
                total=self.steps_per_epoch,
                initial=done,
                desc=f"epoch {epoch}",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )

    def log(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk, a file system gone read-only
            raise UserError(
                f"cannot write {self.out / 'metrics.jsonl'} ({e.strerror or e}); free space on that disk, then "
                f"continue with the same command and resume=auto run.dir={self.out}"
            ) from e
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(numbers, step=record["step"])
        if self.bar is not None and "loss" in record:
            self.bar.n = (record["step"] - 1) % self.steps_per_epoch + 1
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", clips_per_s=f"{record.get('clips_per_s', 0):.1f}")
            return
        parts = [
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.items()
            if k in ("step", "epoch", "loss", "lr", "clips_per_s", "data_wait")
        ]
        log.info(" ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        from mvcoding.plots import plot_training

        plot_training(self.out / "metrics.jsonl", self.out / "training.png")
