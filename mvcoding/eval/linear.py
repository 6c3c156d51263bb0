"""The linear probe: a linear classifier on the frozen, standardised features of each eval.views entry."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from mvcoding.eval.features import EvalSetup, clip_features, entry_features, prepare
from mvcoding.eval.report import entry_folder, finish_entries, log_metrics, protocol, report, start_run
from mvcoding.files import save_atomic
from mvcoding.optim import build_optimizer, lr_factor

log = logging.getLogger(__name__)


def train_linear(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lcfg,
    *,
    seed: int,
    device: torch.device,
    out: Path | None = None,
    entry: str | None = None,
) -> nn.Linear:
    """A linear classifier on standardised features x (N, D) with labels y (N,): minibatch (or full
    batch when lcfg.batch_size is null or >= N) SGD with momentum 0.9, Adam or AdamW, cosine-decayed lr.
    Progress lines go to out/metrics.jsonl (with "entry" when given)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    clf = nn.Linear(x.shape[1], num_classes).to(device)
    opt = build_optimizer(
        clf.parameters(), lcfg.optimizer, lr=lcfg.lr, weight_decay=lcfg.weight_decay, key="eval.linear.optimizer"
    )
    n = len(x)
    bs = n if not lcfg.batch_size or lcfg.batch_size >= n else int(lcfg.batch_size)
    total, step = int(lcfg.epochs) * math.ceil(n / bs), 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, total, "cosine"))
    every = max(1, int(lcfg.epochs) // 10)
    for epoch in range(int(lcfg.epochs)):
        perm = torch.randperm(n, generator=g).to(device)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            logits = clf(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y[idx]).sum().item()
        if (epoch + 1) % every == 0 or epoch + 1 == lcfg.epochs:
            rec = {
                "epoch": epoch + 1,
                "step": step,
                "loss": loss_sum / n,
                "train_top1": correct / n,
                "lr": sched.get_last_lr()[0],
            } | ({} if entry is None else {"entry": entry})
            log.info(
                "linear classifier %sepoch %d/%d: loss %.4f, train top-1 %.1f%%",
                f"{entry} " if entry else "",
                epoch + 1,
                lcfg.epochs,
                rec["loss"],
                100 * rec["train_top1"],
            )
            if out is not None:
                log_metrics(out, rec)
    return clf.eval()


def linear_probe(cfg: DictConfig, checkpoint: str | None, out: Path, random_init: bool = False) -> dict:
    """Linear probe on the frozen encoders of each cfg.eval.views entry (an entry's views' features
    concatenated), every view's features extracted once; writes the linear files (mvcoding.eval and
    mvcoding.eval.report: entries) into `out` and returns the first entry's metrics."""
    s = prepare(cfg, checkpoint, random_init=random_init)
    out = start_run(cfg, out)
    feats = clip_features(s, out)
    records = {}
    for entry, parts in s.entries.items():
        folder = entry_folder(out, entry, s.entries)
        records[entry] = probe_entry(s, feats, entry, parts, out=out, folder=folder)
    files = ["results.json", "probs.pt", "confusion.png", "features.pt", "classifier.pt", "metrics.jsonl"]
    return finish_entries(out, records, files=files, copy=["probs.pt", "classifier.pt", "confusion.png"])["metrics"]


def probe_entry(s: EvalSetup, feats: dict, entry: str, parts, *, out: Path, folder: Path) -> dict:
    """The probe of one entry on its slice of the features (clip_features); writes classifier.pt and the
    classification files into `folder` (training lines into out/metrics.jsonl); returns its record."""
    train, test = feats["train"], feats["test"]
    x_train = entry_features(train["x"], train["dims"], parts)  # (N_train, K, D)
    x_test = entry_features(test["x"], test["dims"], parts)
    k = x_train.shape[1]
    x = x_train.flatten(0, 1)  # (N_train * K, D): every train clip and crop is a sample
    y = train["label"].repeat_interleave(k)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    lc = s.cfg.eval.linear
    clf = train_linear(
        (x - mean) / std, y, len(s.index.classes), lc, seed=s.cfg.seed, device=s.device, out=out, entry=entry
    )
    with torch.no_grad():
        scores = clf(((x_test - mean) / std).to(s.device)).cpu()  # (N_test, K, C)
    weights = {"weight": clf.weight.detach().cpu(), "bias": clf.bias.detach().cpu(), "mean": mean, "std": std}
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(weights | {"views": list(parts), "classes": s.index.classes}, folder / "classifier.pt")
    proto = protocol(
        s,
        parts,
        train_clips=int(s.cfg.eval.train_clips),
        epochs=int(lc.epochs),
        lr=lc.lr,
        weight_decay=lc.weight_decay,
        batch_size=lc.batch_size,
        optimizer=lc.optimizer,
    )
    files = ["classifier.pt"] if folder != out else ["features.pt", "classifier.pt", "metrics.jsonl"]
    return report(s, folder, "linear", test | {"x": scores}, proto, files, entry=entry)
