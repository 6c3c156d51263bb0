"""Transfer to action recognition: linear probe, fine-tuning, retrieval, two-stream late fusion.

Modules: features (eval clips, setup, forward passes, cached features), linear, finetune, retrieval,
fuse, metrics (pure functions on tensors), report (results.json, summary.md, probs.pt).

    mvcoding eval linear    CONFIG.yaml checkpoint=runs/x/checkpoints/last.pt [key=value ...]
    mvcoding eval finetune  CONFIG.yaml checkpoint=...
    mvcoding eval retrieval CONFIG.yaml checkpoint=...
    mvcoding eval fuse      runs/a/results.json runs/b/results.json [--out DIR]

The views come from the config on the command line (cfg.views, the encoders' settings) and
cfg.eval.views lists what to evaluate: entries, each a view or views joined with + (their features
concatenated in that order), each evaluated and reported on its own, e.g. [rgb, flow, rgb+flow]
gives three results. Every view's features are extracted once, whatever the number of entries that
use it. The encoder weights are the checkpoint's "encoders.<view>.*" (or random with
eval.random_init=true, a baseline). finetune trains one encoder: the first entry's, which must be a
single view.

Levels. A test video gives eval.clips temporal clips spread uniformly over it, each seen in
eval.crops spatial crops (1: the centre square; 3: three squares along the long side). A *clip*
score is the mean over its crops; a *video* score is the mean over its clips (class probabilities
for linear and finetune, features for retrieval). Every results.json says which metric is which.

Each evaluation writes into its run directory (run.dir, or runs/<name>-eval-<task>-<timestamp>):
config.yaml, results.json (format in mvcoding.eval.report), summary.md, and
  linear:    features.pt (frozen features, reused when the same directory is evaluated again with the
             same checkpoint (SHA-256), dataset root, videos, labels and list files, video files and
             eval settings; anything else extracts them again), classifier.pt, probs.pt, confusion.png,
             metrics.jsonl (classifier training)
  finetune:  finetuned.pt (encoder and head), probs.pt, confusion.png, metrics.jsonl (one line per epoch)
  retrieval: features.pt, retrieval.png
The top level is the first entry's evaluation; with several entries each also has <entry>/ (its
results.json, summary.md and, for linear, classifier.pt, probs.pt, confusion.png; for retrieval,
retrieval.png), and results.json's "entries" holds every entry's metrics (mvcoding.eval.report).
probs.pt holds the test videos' class probabilities: {"video_ids", "labels" (V,), "probs" (V, C),
"clip_probs" (N, C), "clip_video" (N,), "classes", "dataset", "split", "views", "task", "dataset_root",
"dataset_sha256"}; fuse reads it, and refuses two results whose dataset_root or dataset_sha256 differ.
fuse writes results.json, probs.pt, confusion.png and summary.md into runs/fuse-<timestamp> (or `out`).
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from mvcoding.config import lock_run_dir
from mvcoding.errors import UserError
from mvcoding.eval.finetune import finetune
from mvcoding.eval.fuse import fuse
from mvcoding.eval.linear import linear_probe
from mvcoding.eval.retrieval import retrieval

__all__ = ["TASKS", "evaluate", "fuse"]
TASKS = ("linear", "finetune", "retrieval")


def evaluate(task: str, cfg: DictConfig) -> Path:
    """Run `task` (linear, finetune or retrieval) on cfg; returns the eval run directory."""
    if task not in TASKS:
        raise UserError(f"unknown eval task {task!r}; choose one of: {', '.join(TASKS)}, fuse")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.run.dir) if cfg.run.dir else Path("runs") / f"{cfg.name}-eval-{task}-{stamp}"
    with lock_run_dir(out, f"eval {task}"):  # a second evaluation (or training) on run.dir is one line
        if task == "linear":
            linear_probe(cfg, cfg.checkpoint, out, random_init=bool(cfg.eval.random_init))
        elif task == "finetune":
            finetune(cfg, out)
        else:
            retrieval(cfg, out)
    return out
