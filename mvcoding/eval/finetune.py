"""Fine-tuning: one encoder with a new head, trained end to end, tested with multi-clip sampling."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from mvcoding.data import EpochSampler, MultiViewClips, loader_options, make_loader
from mvcoding.errors import UserError
from mvcoding.eval.features import eval_loader, parse_entries, prepare, progress, run_clips
from mvcoding.eval.report import finish_entries, log_metrics, protocol, report, start_run
from mvcoding.files import save_atomic
from mvcoding.optim import build_optimizer, lr_factor
from mvcoding.registry import to_model

log = logging.getLogger(__name__)


def finetune(cfg: DictConfig, out: Path) -> dict:
    """Fine-tune the encoder of the first entry of cfg.eval.views (a single view: one encoder is trained;
    later entries are ignored with a warning) with a new dropout + linear head, train-time augmentation
    and a backbone lr of lr * backbone_lr_mult; test with multi-clip sampling."""
    ft = cfg.eval.finetune
    entries = parse_entries(list(cfg.eval.views), list(cfg.views or {}))
    first, parts = next(iter(entries.items()))
    if len(parts) > 1:
        raise UserError(
            f"finetune trains one encoder, but the first eval.views entry {first!r} joins "
            f"{len(parts)} views; put a single view first, e.g. eval.views=[{parts[0]}]"
        )
    if len(entries) > 1:
        log.warning("finetune trains one encoder: using %s, the first entry of eval.views=%s", first, list(entries))
    s = prepare(cfg, cfg.checkpoint, random_init=bool(cfg.eval.random_init), names=[first])
    out = start_run(cfg, out)
    name = next(iter(s.views))
    encoder = s.encoders[name]
    torch.manual_seed(cfg.seed)
    head = nn.Sequential(nn.Dropout(ft.dropout), nn.Linear(encoder.feat_dim, len(s.index.classes)))
    model = nn.Sequential(encoder, head).to(s.device)

    data = MultiViewClips(
        s.index.train,
        {name: s.views[name]},
        s.lengths,
        frames=cfg.data.frames,
        stride=cfg.data.stride,
        train=True,
        scale=cfg.data.scale,
        flip=cfg.data.flip,
        seed=cfg.seed,
    )
    b = min(int(ft.batch_size), len(data))
    sampler = EpochSampler(len(data), seed=cfg.seed, shuffle=True, batch_size=b)
    loader = make_loader(data, sampler, batch_size=b, drop_last=True, **loader_options(cfg.data, s.device))
    groups = [
        {"params": encoder.parameters(), "lr": ft.lr * ft.backbone_lr_mult},
        {"params": head.parameters(), "lr": ft.lr},
    ]
    opt = build_optimizer(groups, ft.optimizer, lr=ft.lr, weight_decay=ft.weight_decay, key="eval.finetune.optimizer")
    total = int(ft.epochs) * len(sampler) // b
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, total, "cosine"))
    autocast = torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.device.type == "cuda")
    step = 0
    for epoch in range(int(ft.epochs)):
        data.epoch = epoch
        sampler.set_epoch(epoch)
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for batch in progress(loader, desc=f"finetune epoch {epoch + 1}/{ft.epochs}"):
            x, y = to_model(s.views[name], batch[name], s.device), batch["label"].to(s.device)
            with autocast:
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item() * len(y), seen + len(y)
            correct += (logits.argmax(1) == y).sum().item()
        rec = {"epoch": epoch + 1, "step": step, "loss": loss_sum / max(1, seen), "train_top1": correct / max(1, seen)}
        rec["lr"] = sched.get_last_lr()[-1]
        log.info(
            "finetune epoch %d/%d: loss %.4f, train top-1 %.1f%%",
            epoch + 1,
            ft.epochs,
            rec["loss"],
            100 * rec["train_top1"],
        )
        log_metrics(out, rec)

    save_atomic(
        {"encoder": encoder.state_dict(), "head": head.state_dict(), "view": name, "classes": s.index.classes},
        out / "finetuned.pt",
    )
    test = run_clips(
        {name: model},
        eval_loader(s, s.index.test, {name: s.views[name]}, int(cfg.eval.clips)),
        s.device,
        desc="finetune test",
        views={name: s.views[name]},
    )
    proto = protocol(
        s,
        [name],
        epochs=int(ft.epochs),
        lr=ft.lr,
        backbone_lr_mult=ft.backbone_lr_mult,
        dropout=ft.dropout,
        batch_size=b,
        optimizer=ft.optimizer,
        train_scale=list(cfg.data.scale),
        train_flip=bool(cfg.data.flip),
    )
    files = ["finetuned.pt", "metrics.jsonl"]
    record = report(s, out, "finetune", test, proto, files, entry=name)
    return finish_entries(out, {name: record}, files=["results.json", "probs.pt", "confusion.png", *files])["metrics"]
