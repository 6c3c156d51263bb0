"""Transfer to action recognition: linear probe, fine-tuning, retrieval, two-stream late fusion.

    mvcoding eval linear    CONFIG.yaml checkpoint=runs/x/checkpoints/last.pt [key=value ...]
    mvcoding eval finetune  CONFIG.yaml checkpoint=...
    mvcoding eval retrieval CONFIG.yaml checkpoint=...
    mvcoding eval fuse      runs/a/results.json runs/b/results.json

The views come from the config on the command line (cfg.views, the encoders' settings) and
cfg.eval.views picks the ones to evaluate; their encoder weights are the checkpoint's
"encoders.<view>.*" (or random with eval.random_init=true, a baseline).

Levels. A test video gives eval.clips temporal clips spread uniformly over it, each seen in
eval.crops spatial crops (1: the centre square; 3: three squares along the long side). A *clip*
score is the mean over its crops; a *video* score is the mean over its clips (class probabilities
for linear and finetune, features for retrieval). Every results.json says which metric is which.

Each evaluation writes into its run directory (run.dir, or runs/<name>-eval-<task>-<timestamp>):
config.yaml, results.json (format in mvcoding.reports), summary.md, and
  linear:    features.pt (frozen features, reused when the same directory is evaluated again),
             classifier.pt, probs.pt, confusion.png, metrics.jsonl (classifier training)
  finetune:  finetuned.pt (encoder and head), probs.pt, confusion.png, metrics.jsonl (one line per epoch)
  retrieval: features.pt, retrieval.png
probs.pt holds the test videos' class probabilities: {"video_ids", "labels" (V,), "probs" (V, C),
"clip_probs" (N, C), "clip_video" (N,), "classes", "dataset", "split", "views", "task"}; fuse reads it.
fuse writes results.json, probs.pt, confusion.png and summary.md into runs/fuse-<timestamp> (or `out`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, SequentialSampler

from mvcoding import reports
from mvcoding.data import EpochSampler, MultiViewClips, make_loader, video_lengths
from mvcoding.datasets import DatasetIndex, load_dataset
from mvcoding.errors import UserError
from mvcoding.files import load_safe, save_atomic
from mvcoding.model import build_encoder_of, build_views
from mvcoding.optim import build_optimizer, lr_factor
from mvcoding.registry import Aug, View
from mvcoding.reports import (  # noqa: F401  (the metric functions and fuse are part of this module's API)
    confusion_matrix,
    fuse,
    nearest,
    recall_at_k,
    topk_accuracy,
    video_scores,
)

log = logging.getLogger(__name__)
TASKS = ("linear", "finetune", "retrieval")


# ----------------------------------------------------------------------------- multi-clip, multi-crop data
def crop_boxes(height: int, width: int, crops: int) -> list:
    """Fractional crops (y0, x0, h, w) for eval: 1 -> [None] (the centre square); 3 -> three squares
    along the long side (left/top, centre, right/bottom)."""
    if crops == 1:
        return [None]
    if crops != 3:
        raise UserError(f"eval.crops={crops} is not valid; choose 1 (centre) or 3 (along the long side)")
    if width >= height:
        fw = min(height, width) / width
        return [(0.0, x0, 1.0, fw) for x0 in (0.0, (1 - fw) / 2, 1 - fw)]
    fh = width / height
    return [(y0, 0.0, fh, 1.0) for y0 in (0.0, (1 - fh) / 2, 1 - fh)]


class EvalClips(Dataset):
    """The eval clips of `records` (item i = clip i % clips of video i // clips), each decoded once
    and transformed into `crops` spatial crops: {view: (K, ...), "label", "video", "clip"}."""

    def __init__(self, records, views: dict[str, View], lengths, *, frames: int, stride: int, clips: int, crops: int):
        self.base = MultiViewClips(records, views, lengths, frames=frames, stride=stride, train=False, clips=clips)
        self.crops = crops

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        clip = self.base.clip(i, np.random.default_rng(0))  # eval windows are fixed; the generator is unused
        item, decoded = {}, {}
        for name, view in self.base.views.items():
            if view.source is not None and view.source in decoded:  # one decode per source (rgb, lab_*)
                x = decoded[view.source]
            else:
                x = view.decode(clip)
                if view.source is not None:
                    decoded[view.source] = x
            boxes = crop_boxes(x.shape[-2], x.shape[-1], self.crops)
            item[name] = torch.stack([view.transform(x, Aug(train=False, crop=box)) for box in boxes])
        video = i // self.base.clips
        return item | {"label": self.base.records[video].label, "video": video, "clip": i % self.base.clips}


# ----------------------------------------------------------------------------- setup
@dataclass
class EvalSetup:
    cfg: DictConfig
    device: torch.device
    index: DatasetIndex
    views: dict[str, View]
    encoders: dict[str, nn.Module]
    lengths: dict
    checkpoint: str | None  # None: random init
    sha256: str | None


def resolve_checkpoint(checkpoint) -> Path:
    """checkpoint=PATH of a .pt file or of a run directory (its checkpoints/last.pt)."""
    if not checkpoint:
        raise UserError("no checkpoint given; pass checkpoint=PATH (a .pt file or a run directory) "
                        "or eval.random_init=true for the random-init baseline")  # fmt: skip
    path = Path(str(checkpoint))
    if path.is_dir():
        path = next((p for p in (path / "checkpoints" / "last.pt", path / "last.pt") if p.is_file()), path)
    if not path.is_file():
        raise UserError(f"checkpoint={checkpoint}: no checkpoint there; pass a .pt file written by mvcoding train")
    return path


def load_encoders(views: dict[str, View], checkpoint: Path | None) -> dict[str, nn.Module]:
    """One encoder per view, with the checkpoint's "encoders.<view>.*" weights (random when None)."""
    encoders = {n: build_encoder_of(n, v) for n, v in views.items()}
    if checkpoint is None:
        return encoders
    try:
        ckpt = load_safe(checkpoint)
        state = ckpt["model"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read checkpoint {checkpoint} ({type(e).__name__}: {str(e)[:120]}); "
                        "pass a checkpoint written by mvcoding train") from e  # fmt: skip
    saved = ckpt.get("views") or sorted({k.split(".")[1] for k in state if k.startswith("encoders.")})
    for name, encoder in encoders.items():
        prefix = f"encoders.{name}."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise UserError(f"checkpoint {checkpoint} has no encoder for view {name!r} (it has {list(saved)}); "
                            "set eval.views to some of those")  # fmt: skip
        try:
            encoder.load_state_dict(weights)
        except RuntimeError as e:
            trained = (ckpt.get("config") or {}).get("views", {}).get(name)
            reason = str(e).strip().splitlines()[-1].strip()[:160]
            raise UserError(f"the {name} encoder in {checkpoint} does not fit views.{name} of this config "
                            f"({reason}); use the pretraining settings views.{name}={trained}") from e  # fmt: skip
    return encoders


def prepare(cfg: DictConfig, checkpoint, *, random_init: bool, names=None) -> EvalSetup:
    """Dataset, views, encoders (frozen weights loaded) and video lengths for an evaluation."""
    from mvcoding.train import pick_device

    e = cfg.eval
    names = list(e.views if names is None else names)
    missing = [n for n in names if n not in (cfg.views or {})]
    if not names or missing:
        raise UserError(f"eval.views={names} must name views of the config (views: {list(cfg.views or {})}); "
                        "set eval.views=[rgb] or add the view under views:")  # fmt: skip
    for key in ("clips", "train_clips"):
        if int(e[key]) < 1:
            raise UserError(f"eval.{key}={e[key]} must be at least 1")
    crop_boxes(2, 2, int(e.crops))  # validates eval.crops
    path = None if random_init else resolve_checkpoint(checkpoint)
    index = load_dataset(cfg.dataset)
    if not index.train or not index.test:
        raise UserError(f"dataset {index.name} split {index.split} has {len(index.train)} train and "
                        f"{len(index.test)} test videos; evaluation needs both")  # fmt: skip
    views = build_views(cfg, names)
    for view in views.values():
        if view.check is not None:
            view.check(index.train + index.test)
    torch.manual_seed(cfg.seed)  # random-init encoders are the same on every run
    encoders = load_encoders(views, path)
    lengths = video_lengths(index.train + index.test, cfg)
    log.info("evaluating views %s (%s) on %s split %d: %d train / %d test videos, %d classes", names,
             path or "random init", index.name, index.split, len(index.train), len(index.test),
             len(index.classes))  # fmt: skip
    sha = reports.sha256_file(path) if path is not None else None
    return EvalSetup(cfg, pick_device(cfg.device), index, views, encoders, lengths,
                     str(path) if path else None, sha)  # fmt: skip


def start_run(cfg: DictConfig, out: Path) -> Path:
    """Create the eval run directory with its config.yaml; a re-evaluation starts a fresh metrics.jsonl."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    (out / "metrics.jsonl").unlink(missing_ok=True)
    return out


def log_metrics(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- forward passes
def eval_loader(s: EvalSetup, records, views: dict[str, View], clips: int):
    cfg = s.cfg
    data = EvalClips(records, views, s.lengths, frames=cfg.data.frames, stride=cfg.data.stride, clips=clips,
                     crops=int(cfg.eval.crops))  # fmt: skip
    pin = s.device.type == "cuda" if cfg.data.pin_memory == "auto" else bool(cfg.data.pin_memory)
    return make_loader(data, SequentialSampler(data), batch_size=int(cfg.eval.batch_size), workers=cfg.data.workers,
                       prefetch=cfg.data.prefetch, pin_memory=pin, drop_last=False,
                       start_method=cfg.data.start_method)  # fmt: skip


@torch.no_grad()
def run_clips(modules: dict[str, nn.Module], loader, device: torch.device, desc: str, views=None) -> dict:
    """Outputs of every eval clip and crop: {"x": (N, K, D) (views concatenated), "label", "video"} (N,).
    views: {name: View} whose device_transform turns the loader's items into the modules' input."""
    for m in modules.values():
        m.to(device).eval()
    xs, labels, videos = [], [], []
    for batch in reports.progress(loader, desc=desc):
        parts = []
        for name, module in modules.items():
            x = batch[name].to(device, non_blocking=True)  # (B, K, ...)
            if views is not None and views[name].device_transform is not None:
                x = views[name].device_transform(x)
            parts.append(module(x.flatten(0, 1)).float().view(x.shape[0], x.shape[1], -1).cpu())
        xs.append(torch.cat(parts, dim=-1))
        labels.append(batch["label"])
        videos.append(batch["video"])
    return {"x": torch.cat(xs), "label": torch.cat(labels), "video": torch.cat(videos)}


def clip_features(s: EvalSetup, out: Path) -> dict:
    """Frozen features {"train": ..., "test": ...} (see run_clips), cached in out/features.pt.

    The cache is reused when everything that shapes the features is the same (checkpoint hash, views
    and their settings, clip sampling, dataset and split videos)."""
    cfg, e = s.cfg, s.cfg.eval
    key = {
        "checkpoint_sha256": s.sha256, "seed": cfg.seed if s.sha256 is None else None,
        "views": {n: v.settings for n, v in s.views.items()}, "frames": cfg.data.frames, "stride": cfg.data.stride,
        "size": cfg.data.size, "clips": int(e.clips), "train_clips": int(e.train_clips), "crops": int(e.crops),
        "train": [r.video_id for r in s.index.train], "test": [r.video_id for r in s.index.test],
    }  # fmt: skip
    path = out / "features.pt"
    if path.is_file():
        cached = load_safe(path)
        if cached.get("key") == json.loads(json.dumps(key)):
            log.info("reusing the features in %s", path)
            return cached
        log.info("the features in %s were made differently; extracting again", path)
    t0 = time.perf_counter()
    feats = {"key": key}
    for split, records, clips in (("train", s.index.train, e.train_clips), ("test", s.index.test, e.clips)):
        loader = eval_loader(s, records, s.views, int(clips))
        feats[split] = run_clips(s.encoders, loader, s.device, desc=f"features {split}", views=s.views)
    log.info("features: train %s, test %s (clips x crops x dim) in %.0f s",
             tuple(feats["train"]["x"].shape), tuple(feats["test"]["x"].shape), time.perf_counter() - t0)  # fmt: skip
    save_atomic(json.loads(json.dumps({"key": key})) | {k: feats[k] for k in ("train", "test")}, path)
    return feats


# ----------------------------------------------------------------------------- classification reports
def protocol(s: EvalSetup, names, **extra) -> dict:
    e, d = s.cfg.eval, s.cfg.data
    base = {"views": list(names), "clips": int(e.clips), "crops": int(e.crops), "frames": d.frames}
    return base | {"stride": d.stride, "size": d.size, "random_init": s.checkpoint is None, **extra}


def report(s: EvalSetup, out: Path, task: str, run: dict, proto: dict, files: list[str]) -> dict:
    """Classification metrics and files from the test clips' logits run["x"] (N, K, C) (mvcoding.reports)."""
    return reports.report_classification(out, task, run, s.index, checkpoint=s.checkpoint, sha256=s.sha256,
                                         protocol=proto, files=files)  # fmt: skip


# ----------------------------------------------------------------------------- linear probe
def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, lcfg, *, seed: int, device: torch.device,
                 out: Path | None = None) -> nn.Linear:  # fmt: skip
    """A linear classifier on standardised features x (N, D) with labels y (N,): minibatch (or full
    batch when lcfg.batch_size is null or >= N) SGD with momentum 0.9, Adam or AdamW, cosine-decayed lr."""
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
            rec = {"epoch": epoch + 1, "step": step, "loss": loss_sum / n, "train_top1": correct / n,
                   "lr": sched.get_last_lr()[0]}  # fmt: skip
            log.info("linear classifier epoch %d/%d: loss %.4f, train top-1 %.1f%%", epoch + 1, lcfg.epochs,
                     rec["loss"], 100 * rec["train_top1"])  # fmt: skip
            if out is not None:
                log_metrics(out, rec)
    return clf.eval()


def linear_probe(cfg: DictConfig, checkpoint: str | None, out: Path, random_init: bool = False) -> dict:
    """Linear probe on the frozen encoders of cfg.eval.views (features concatenated); writes the
    linear files (module docstring) into `out` and returns the metrics dict."""
    s = prepare(cfg, checkpoint, random_init=random_init)
    out = start_run(cfg, out)
    feats = clip_features(s, out)
    train, test = feats["train"], feats["test"]
    k = train["x"].shape[1]
    x = train["x"].flatten(0, 1)  # (N_train * K, D): every train clip and crop is a sample
    y = train["label"].repeat_interleave(k)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    clf = train_linear((x - mean) / std, y, len(s.index.classes), cfg.eval.linear, seed=cfg.seed, device=s.device,
                       out=out)  # fmt: skip
    with torch.no_grad():
        scores = clf(((test["x"] - mean) / std).to(s.device)).cpu()  # (N_test, K, C)
    weights = {"weight": clf.weight.detach().cpu(), "bias": clf.bias.detach().cpu(), "mean": mean, "std": std}
    save_atomic(weights | {"views": list(s.views), "classes": s.index.classes}, out / "classifier.pt")
    lc = cfg.eval.linear
    proto = protocol(s, s.views, train_clips=int(cfg.eval.train_clips), epochs=int(lc.epochs), lr=lc.lr,
                     weight_decay=lc.weight_decay, batch_size=lc.batch_size,
                     optimizer=lc.optimizer)  # fmt: skip
    return report(s, out, "linear", test | {"x": scores}, proto,
                                 ["features.pt", "classifier.pt", "metrics.jsonl"])  # fmt: skip


# ----------------------------------------------------------------------------- fine-tuning
def finetune(cfg: DictConfig, out: Path) -> dict:
    """Fine-tune the encoder of cfg.eval.views[0] with a new dropout + linear head, train-time
    augmentation and a backbone lr of lr * backbone_lr_mult; test with multi-clip sampling."""
    ft = cfg.eval.finetune
    if len(cfg.eval.views) > 1:
        log.warning("finetune trains one encoder: using %s of eval.views=%s", cfg.eval.views[0], list(cfg.eval.views))
    s = prepare(cfg, cfg.checkpoint, random_init=bool(cfg.eval.random_init), names=list(cfg.eval.views)[:1])
    out = start_run(cfg, out)
    name = next(iter(s.views))
    encoder = s.encoders[name]
    torch.manual_seed(cfg.seed)
    head = nn.Sequential(nn.Dropout(ft.dropout), nn.Linear(encoder.feat_dim, len(s.index.classes)))
    model = nn.Sequential(encoder, head).to(s.device)

    data = MultiViewClips(s.index.train, {name: s.views[name]}, s.lengths, frames=cfg.data.frames,
                          stride=cfg.data.stride, train=True, scale=cfg.data.scale, flip=cfg.data.flip,
                          seed=cfg.seed)  # fmt: skip
    b = min(int(ft.batch_size), len(data))
    sampler = EpochSampler(len(data), seed=cfg.seed, shuffle=True, batch_size=b)
    pin = s.device.type == "cuda" if cfg.data.pin_memory == "auto" else bool(cfg.data.pin_memory)
    loader = make_loader(data, sampler, batch_size=b, workers=cfg.data.workers, prefetch=cfg.data.prefetch,
                         pin_memory=pin, drop_last=True, start_method=cfg.data.start_method)  # fmt: skip
    groups = [{"params": encoder.parameters(), "lr": ft.lr * ft.backbone_lr_mult},
              {"params": head.parameters(), "lr": ft.lr}]  # fmt: skip
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
        for batch in reports.progress(loader, desc=f"finetune epoch {epoch + 1}/{ft.epochs}"):
            x, y = batch[name].to(s.device, non_blocking=True), batch["label"].to(s.device)
            if s.views[name].device_transform is not None:
                x = s.views[name].device_transform(x)
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
        log.info("finetune epoch %d/%d: loss %.4f, train top-1 %.1f%%", epoch + 1, ft.epochs, rec["loss"],
                 100 * rec["train_top1"])  # fmt: skip
        log_metrics(out, rec)

    save_atomic({"encoder": encoder.state_dict(), "head": head.state_dict(), "view": name,
                         "classes": s.index.classes}, out / "finetuned.pt")  # fmt: skip
    test = run_clips({name: model}, eval_loader(s, s.index.test, {name: s.views[name]}, int(cfg.eval.clips)),
                     s.device, desc="finetune test", views={name: s.views[name]})  # fmt: skip
    proto = protocol(s, [name], epochs=int(ft.epochs), lr=ft.lr, backbone_lr_mult=ft.backbone_lr_mult,
                     dropout=ft.dropout, batch_size=b, optimizer=ft.optimizer, train_scale=list(cfg.data.scale),
                     train_flip=bool(cfg.data.flip))  # fmt: skip
    return report(s, out, "finetune", test, proto, ["finetuned.pt", "metrics.jsonl"])


# ----------------------------------------------------------------------------- retrieval
def retrieval(cfg: DictConfig, out: Path) -> dict:
    """Test videos query the train videos by cosine similarity of clip-averaged frozen features."""
    s = prepare(cfg, cfg.checkpoint, random_init=bool(cfg.eval.random_init))
    out = start_run(cfg, out)
    feats = clip_features(s, out)
    train, test = feats["train"], feats["test"]
    q_clip, g_clip = test["x"].mean(1), train["x"].mean(1)  # (N, D): crops averaged
    q_video, g_video = video_scores(q_clip, test["video"]), video_scores(g_clip, train["video"])
    q_labels = torch.tensor([r.label for r in s.index.test])
    g_labels = torch.tensor([r.label for r in s.index.train])
    ks = sorted({int(k) for k in cfg.eval.retrieval.ks} | {1})
    video = recall_at_k(q_video, g_video, q_labels, g_labels, ks)
    clip = recall_at_k(q_clip, g_clip, test["label"], train["label"], ks)
    e = cfg.eval
    level_v = f"video: test videos (features averaged over {e.clips} clips) query train videos ({e.train_clips} clips)"
    level_c = "clip: every test clip queries every train clip"
    metrics = {f"recall@{k}": video[k] for k in ks} | {"video_top1": video[1]}
    metrics |= {f"clip_recall@{k}": clip[k] for k in ks} | {"clip_top1": clip[1]}
    level = {k: level_c if k.startswith("clip") else level_v for k in metrics}
    level["video_top1"] += " (1-nearest-neighbour accuracy, = recall@1)"
    level["clip_top1"] += " (1-nearest-neighbour accuracy, = clip_recall@1)"
    proto = protocol(s, s.views, train_clips=int(e.train_clips), ks=ks, similarity="cosine")
    record = reports.results_record("retrieval", metrics, level, s.index, s.checkpoint, s.sha256, proto)
    reports.write_results(out, record)
    picks = torch.linspace(0, len(q_video) - 1, min(5, len(q_video))).round().long().unique()  # spread over the list
    neighbours = nearest(q_video[picks], g_video, 5).tolist()
    queries = [s.index.test[i] for i in picks.tolist()]
    gallery = [[s.index.train[j] for j in row] for row in neighbours]
    reports.plot_retrieval(queries, gallery, s.index.classes, s.lengths, out / "retrieval.png")
    note = f"recall@k beyond the {len(g_video)} train videos counts the whole gallery"
    reports.write_summary(out, record, files=["results.json", "features.pt", "retrieval.png"], notes=[note])
    recalls = ", ".join(f"{k} {100 * video[k]:.1f}%" for k in ks)
    log.info("retrieval: video recall@%s (%s)", recalls, out / "results.json")
    return metrics


# ----------------------------------------------------------------------------- entry points
def evaluate(task: str, cfg: DictConfig) -> Path:
    """Run `task` (linear, finetune or retrieval) on cfg; returns the eval run directory."""
    if task not in TASKS:
        raise UserError(f"unknown eval task {task!r}; choose one of: {', '.join(TASKS)}, fuse")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.run.dir) if cfg.run.dir else Path("runs") / f"{cfg.name}-eval-{task}-{stamp}"
    if task == "linear":
        linear_probe(cfg, cfg.checkpoint, out, random_init=bool(cfg.eval.random_init))
    elif task == "finetune":
        finetune(cfg, out)
    else:
        retrieval(cfg, out)
    return out
