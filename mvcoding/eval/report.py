"""What an evaluation writes: the run directory (config.yaml, metrics.jsonl), results.json, probs.pt
and summary.md (the pictures beside them are drawn by mvcoding.plots).

results.json (one per evaluation; the contract keys are task, metrics, checkpoint and split)::

    {"task": "linear" | "finetune" | "retrieval" | "fuse",
     "metrics": {"video_top1": 0.83, "clip_top1": 0.71, ...},           fractions in [0, 1]
     "level": {"video_top1": "video: ...", "clip_top1": "clip: ...", ...}, the level of each metric
                                                                         ("video" or "clip") and how
     "checkpoint": PATH or null (random init), "checkpoint_sha256": HEX or null,
     "split": 1, "dataset": "ucf101", "protocol": {views, clips, crops, epochs, lr, ...},
     "num_train": N, "num_test": M, "num_classes": C}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from mvcoding.eval.metrics import classification_metrics, confusion_matrix
from mvcoding.files import save_atomic, write_text_atomic
from mvcoding.plots import plot_confusion

if TYPE_CHECKING:
    from mvcoding.eval.features import EvalSetup

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the run directory
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


# ----------------------------------------------------------------------------- results.json, summary.md, probs.pt
def write_results(out: Path, record: dict) -> Path:
    """results.json in `out` (see the module docstring); floats rounded to 6 digits."""
    path = out / "results.json"
    write_text_atomic(path, json.dumps(_rounded(record), indent=2) + "\n")
    return path


def _rounded(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_rounded(v) for v in x]
    return x


def write_summary(out: Path, record: dict, *, files: Sequence[str], notes: Sequence[str] = ()) -> Path:
    """summary.md: the metrics table with each metric's level, then where the numbers come from."""
    lines = [f"# {record['task']} evaluation", ""]
    lines += ["| metric | value | level |", "|---|---|---|"]
    for k, v in record["metrics"].items():
        value = f"{v:.1%}" if isinstance(v, float) else str(v)
        lines.append(f"| {k} | {value} | {record['level'].get(k, '')} |")
    ckpt = record.get("checkpoint")
    sha = record.get("checkpoint_sha256")
    lines += [
        "",
        f"- checkpoint: {ckpt if ckpt else 'none (randomly initialised encoders)'}"
        + (f" (sha256 {sha[:16]}...)" if isinstance(sha, str) else ""),
        f"- dataset: {record.get('dataset')} split {record.get('split')}, "
        f"{record.get('num_train')} train / {record.get('num_test')} test videos, "
        f"{record.get('num_classes')} classes",
        "- protocol: " + ", ".join(f"{k}={v}" for k, v in record.get("protocol", {}).items()),
        *[f"- {n}" for n in notes],
        "- files: " + ", ".join(files),
        "",
    ]
    path = out / "summary.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def results_record(task: str, metrics: dict, level: dict, index, checkpoint: str | None, sha256: str | None,
                   protocol: dict) -> dict:  # fmt: skip
    """The results.json record (format in the module docstring); index: the DatasetIndex evaluated."""
    return {
        "task": task,
        "metrics": metrics,
        "level": level,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha256,
        "split": index.split,
        "dataset": index.name,
        "protocol": protocol,
        "num_train": len(index.train),
        "num_test": len(index.test),
        "num_classes": len(index.classes),
    }


def report_classification(out: Path, task: str, run: dict, index, *, checkpoint: str | None, sha256: str | None,
                          protocol: dict, files: Sequence[str]) -> dict:  # fmt: skip
    """Metrics of a classifier from its test-clip logits run["x"] (N, K, C) over K crops, with
    run["label"], run["video"] (N,): softmax, mean over crops (clip level), mean over clips (video
    level). Writes probs.pt, results.json, confusion.png and summary.md; returns the metrics."""
    clip_probs = run["x"].softmax(-1).mean(1)  # (N, C)
    crops = run["x"].shape[1]
    metrics, level, probs, labels = classification_metrics(clip_probs, run["label"], run["video"], crops=crops)
    saved = {
        "video_ids": [r.video_id for r in index.test],
        "labels": labels,
        "probs": probs,
        "clip_probs": clip_probs,
        "clip_video": run["video"],
        "classes": index.classes,
        "dataset": index.name,
        "split": index.split,
        "views": protocol["views"],
        "task": task,
    }
    record = results_record(task, metrics, level, index, checkpoint, sha256, protocol)
    write_classification(out, record, saved, files=files)
    log.info("%s: video top-1 %.1f%%, clip top-1 %.1f%% (%s)", task, 100 * metrics["video_top1"],
             100 * metrics["clip_top1"], out / "results.json")  # fmt: skip
    return metrics


def write_classification(out: Path, record: dict, saved: dict, *, files: Sequence[str] = (), notes=()) -> None:
    """probs.pt (`saved`), results.json (`record`), confusion.png (video level) and summary.md in `out`.

    saved: {"video_ids", "labels" (V,), "probs" (V, C), "clip_probs" (N, C) or None, "clip_video" (N,),
    "classes", "dataset", "split", "views", "task"}, what fuse reads back.
    """
    save_atomic(saved, out / "probs.pt")
    write_results(out, record)
    cm = confusion_matrix(saved["probs"].argmax(1), saved["labels"], len(saved["classes"]))
    top1 = record["metrics"]["video_top1"]
    title = f"{record['task']} {' + '.join(saved['views'])}: video-level, top-1 {top1:.1%}"
    plot_confusion(cm, saved["classes"], out / "confusion.png", title=title)
    write_summary(out, record, files=["results.json", "probs.pt", "confusion.png", *files], notes=notes)


# ----------------------------------------------------------------------------- classification reports
def protocol(s: EvalSetup, names, **extra) -> dict:
    e, d = s.cfg.eval, s.cfg.data
    base = {"views": list(names), "clips": int(e.clips), "crops": int(e.crops), "frames": d.frames}
    return base | {"stride": d.stride, "size": d.size, "random_init": s.checkpoint is None, **extra}


def report(s: EvalSetup, out: Path, task: str, run: dict, proto: dict, files: list[str]) -> dict:
    """Classification metrics and files from the test clips' logits run["x"] (N, K, C) (report_classification)."""
    return report_classification(out, task, run, s.index, checkpoint=s.checkpoint, sha256=s.sha256,
                                 protocol=proto, files=files)  # fmt: skip
