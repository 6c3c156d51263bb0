"""The training loop: one readable loop, generic over the batch dict of any number of views.

mvcoding train configs/synthetic_rgb_flow.yaml train.max_steps=50
torchrun --nproc_per_node=2 -m mvcoding train configs/ucf101_rgb_flow.yaml dataset.root=...
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from mvcoding import distributed as dist
from mvcoding.config import run_dir
from mvcoding.data import EpochSampler, MultiViewClips, make_loader, video_lengths
from mvcoding.datasets import load_dataset
from mvcoding.errors import UserError
from mvcoding.files import save_atomic
from mvcoding.model import MultiViewModel, build_views
from mvcoding.objectives import CMCObjective, PredictiveDecoder, predictive_loss

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
    return torch.device(name)


def lr_factor(step: int, total: int, cfg: DictConfig) -> float:
    """Learning-rate multiplier at `step` of `total`: linear warmup, then cosine / step / constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        return cfg.gamma ** sum(step >= m * total for m in cfg.milestones)
    return 1.0


def build_optimizer(params, cfg: DictConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def find_resume(cfg: DictConfig, out: Path) -> Path | None:
    """resume=PATH -> PATH; resume=auto -> <run.dir>/checkpoints/last.pt, or the newest runs/<name>-*."""
    if not cfg.resume:
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if path.is_dir():
            path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise UserError(f"resume={cfg.resume}: no checkpoint there; pass a .pt file or a run directory")
        return path
    candidates = [out / "checkpoints" / "last.pt"] if cfg.run.dir else sorted(
        Path("runs").glob(f"{cfg.name}-*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)  # fmt: skip
    found = [p for p in candidates if p.is_file()]
    return found[-1] if found else None


def train(cfg: DictConfig) -> Path:
    """Pretrain the encoders of `cfg.views` with the configured objective; returns the run directory."""
    device = pick_device(cfg.device)
    dist.init_from_env(device)
    rank, world = dist.rank(), dist.world_size()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    out = run_dir(cfg)
    resume_path = find_resume(cfg, out)
    if resume_path is not None and not cfg.run.dir:
        out = resume_path.parent.parent
    out = Path(dist.broadcast_object(str(out)))

    views = build_views(cfg)  # first: a misspelt view setting fails before any data work
    index = load_dataset(cfg.dataset)
    records = index.records("train")
    for view in views.values():
        if view.check is not None:
            view.check(records)
    lengths = video_lengths(records, cfg.cache.dir) if dist.is_main() else None
    dist.barrier()
    lengths = lengths or video_lengths(records, cfg.cache.dir)
    data = MultiViewClips(records, views, lengths, frames=cfg.data.frames, stride=cfg.data.stride, train=True,
                          scale=cfg.data.scale, flip=cfg.data.flip, seed=cfg.seed,
                          shared_crop=cfg.data.shared_crop)  # fmt: skip
    b, global_b = cfg.train.batch_size, cfg.train.batch_size * world
    if len(data) < global_b:
        raise UserError(f"train.batch_size={b} x {world} processes exceeds the {len(data)} training videos")
    sampler = EpochSampler(len(data), seed=cfg.seed, shuffle=True, rank=rank, world=world, batch_size=b)
    pin = device.type == "cuda" if cfg.data.pin_memory == "auto" else bool(cfg.data.pin_memory)
    loader = make_loader(data, sampler, batch_size=b, workers=cfg.data.workers, prefetch=cfg.data.prefetch,
                         pin_memory=pin, drop_last=True)  # fmt: skip
    steps_per_epoch = len(data) // global_b
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)

    o = cfg.objective
    model = MultiViewModel(views, o.dim).to(device)
    channels_last = cfg.train.channels_last == "auto" and device.type == "cuda" or cfg.train.channels_last is True
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    decoder = None
    if o.name == "predictive":
        p = o.predict
        item = data[0]
        decoder = PredictiveDecoder(
            in_features=model.encoders[p.source].feat_dim, out_shape=tuple(item[p.target].shape)
        )
        decoder = decoder.to(device)
        objective = None
    else:
        objective = CMCObjective(views=list(views), graph=o.graph, anchor=o.anchor, negatives=o.negatives,
                                 score=o.score, n_data=len(data), dim=o.dim, K=o.K, tau=o.tau,
                                 momentum=o.momentum, z_momentum=o.z_momentum).to(device)  # fmt: skip
    params = list(model.parameters()) + (list(decoder.parameters()) if decoder is not None else [])
    optimizer = build_optimizer(params, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg.optim))
    neg_gen = torch.Generator().manual_seed(cfg.seed + 1)

    step, epoch, batch_in_epoch = 0, 0, 0
    if resume_path is not None:
        ckpt = torch.load(resume_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        if objective is not None:
            objective.load_state_dict(ckpt["objective"])
        if decoder is not None:
            decoder.load_state_dict(ckpt["decoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        neg_gen.set_state(ckpt["neg_gen"])
        set_rng_state(ckpt["rng"])
        step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        if dist.is_main():
            log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_path, step, epoch, batch_in_epoch)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.train.compile:
        net = torch.compile(net)
    amp = (cfg.train.amp == "auto" and device.type == "cuda") or cfg.train.amp == "bf16"
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    if dist.is_main():
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out / "config.yaml")
        log.info("run directory %s: %d videos, %d steps/epoch, %d steps, device %s, %d process(es)",
                 out, len(data), steps_per_epoch, total, device, world)  # fmt: skip
    logger = MetricsLogger(out) if dist.is_main() else None

    def checkpoint(step_: int, epoch_: int, batch_: int) -> None:
        if not dist.is_main():
            return
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "objective": objective.state_dict() if objective is not None else None,
            "decoder": decoder.state_dict() if decoder is not None else None,
            "neg_gen": neg_gen.get_state(), "rng": rng_state(), "step": step_, "epoch": epoch_,
            "batch_in_epoch": batch_, "config": OmegaConf.to_container(cfg, resolve=True), "views": list(views),
        }  # fmt: skip
        save_atomic(state, out / "checkpoints" / "last.pt")

    model.train()
    t_last, wait, n_clips = time.perf_counter(), 0.0, 0
    while step < total:
        data.epoch = epoch
        sampler.set_epoch(epoch, skip=batch_in_epoch * b)
        t_fetch = time.perf_counter()
        for batch in loader:
            wait += time.perf_counter() - t_fetch
            index = batch["index"].to(device, non_blocking=True)
            x = {n: batch[n].to(device, non_blocking=True) for n in views}
            if channels_last:
                x = {n: v.to(memory_format=torch.channels_last_3d) if v.dim() == 5 else v for n, v in x.items()}
            with autocast():
                if decoder is None:
                    z = net(x)
                    z = {n: v.float() for n, v in z.items()}
                    loss, stats = objective(z, index, generator=neg_gen)
                else:
                    p = o.predict
                    pred = decoder(model.encoders[p.source](x[p.source])).float()
                    loss = predictive_loss(pred, x[p.target].float(), p.loss)
                    stats = {f"loss/{p.source}->{p.target}": loss.item()}
            if not torch.isfinite(loss):
                checkpoint(step, epoch, batch_in_epoch)  # the state before this step is the last good one
                bad = [k for k, v in stats.items() if k.startswith("loss/") and not math.isfinite(v)] or ["total"]
                raise UserError(
                    f"loss is {loss.item()} at step {step} (pair {bad[0][5:]}); the last good state is in "
                    f"{out}/checkpoints/last.pt; lower optim.lr or set train.clip_grad"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad)
            optimizer.step()
            scheduler.step()
            if objective is not None:
                objective.update({n: v.detach() for n, v in z.items()}, index)
            step, batch_in_epoch, n_clips = step + 1, batch_in_epoch + 1, n_clips + global_b

            if step % cfg.train.log_every == 0 or step == total:
                loss_mean = dist.all_reduce_mean(loss.detach()).item()  # a CPU-GPU sync point, once per log line
                now = time.perf_counter()
                record = {"step": step, "epoch": epoch, "loss": loss_mean, **stats,
                          "lr": scheduler.get_last_lr()[0], "clips_per_s": n_clips / (now - t_last),
                          "data_wait": wait / (now - t_last)}  # fmt: skip
                if world > 1 and objective is not None and objective.negatives == "memory_bank":
                    record["bank_max_diff"] = bank_divergence(objective)
                if logger:
                    logger.log(record)
                t_last, wait, n_clips = now, 0.0, 0
            if step % cfg.train.save_every == 0 or step == total:
                checkpoint(step, epoch, batch_in_epoch)
            if step >= total:
                break
            t_fetch = time.perf_counter()
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            checkpoint(step, epoch, batch_in_epoch)
    if logger:
        logger.close()
    dist.barrier()
    dist.cleanup()
    return out


def bank_divergence(objective: CMCObjective) -> float:
    """Largest difference between ranks of two checksums of every memory bank (0.0: all ranks agree)."""
    sums = []
    for bank in objective.banks.buffers():
        weights = torch.arange(bank.shape[0], device=bank.device, dtype=torch.float64)[:, None]
        sums += [bank.double().sum(), (bank.double() * weights).sum()]
    every = dist.all_gather_cat(torch.stack(sums)[None])  # (world, 2 * views)
    return (every - every[0]).abs().max().item()


class MetricsLogger:
    """metrics.jsonl always; TensorBoard when installed; a PNG of the curves at the end."""

    def __init__(self, out: Path):
        self.out = out
        self.file = open(out / "metrics.jsonl", "a")  # noqa: SIM115  (append: a resumed run continues it)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            self.tb = None

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                 if k in ("step", "epoch", "loss", "lr", "clips_per_s", "data_wait")]  # fmt: skip
        log.info(" ".join(parts))

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        from mvcoding.plots import plot_training

        plot_training(self.out / "metrics.jsonl", self.out / "training.png")
