"""Metrics and what an evaluation writes: results.json, probs.pt, summary.md, PNGs; late fusion.

The metric functions are pure functions on tensors (scores (N, C), features (N, D)).

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

import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mvcoding.errors import UserError
from mvcoding.files import load_safe, save_atomic, write_text_atomic

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- metrics (pure functions)
def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows of scores (N, C) whose label (N,) is among the k highest (k capped at C)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
    return (top == labels.view(-1, 1)).any(1).float().mean().item()


def video_scores(clip_scores: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of clip_scores (N, C) per video index (N,) -> (V, C), rows in sorted video order."""
    ids, inverse = video.unique(sorted=True, return_inverse=True)
    sums = torch.zeros(len(ids), clip_scores.shape[1], dtype=clip_scores.dtype).index_add_(0, inverse, clip_scores)
    counts = torch.bincount(inverse, minlength=len(ids)).to(clip_scores.dtype)
    return sums / counts.view(-1, 1)


def video_labels(clip_labels: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """The label (V,) of each video, in the row order of video_scores (every clip carries its video's label)."""
    ids, inverse = video.unique(sorted=True, return_inverse=True)
    labels = torch.empty(len(ids), dtype=torch.long)
    labels[inverse] = clip_labels.long()
    return labels


def nearest(query: torch.Tensor, gallery: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (Q, min(k, G)) of each query's (Q, D) most cosine-similar gallery rows (G, D), best first."""
    sim = F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T  # (Q, G)
    return sim.topk(min(k, gallery.shape[0]), dim=1).indices


def recall_at_k(
    query: torch.Tensor, gallery: torch.Tensor, q_labels: torch.Tensor, g_labels: torch.Tensor, ks
) -> dict[int, float]:
    """{k: fraction of queries (Q, D) with a same-class row among their k nearest gallery rows (G, D)}.

    Similarity is cosine; a k beyond the gallery size counts the whole gallery.
    """
    ks = [int(k) for k in ks]
    hits = g_labels[nearest(query, gallery, max(ks))] == q_labels.view(-1, 1)  # (Q, k_max)
    return {k: hits[:, :k].any(1).float().mean().item() for k in ks}


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows the true class, columns the predicted one."""
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes**2).view(num_classes, num_classes)


def classification_metrics(
    clip_probs: torch.Tensor, clip_labels: torch.Tensor, clip_video: torch.Tensor, *, crops: int = 1
) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """(metrics, level, video probs (V, C), video labels (V,)) from clip probabilities (N, C).

    Video probabilities are the mean of the video's clip probabilities; top-5 only with > 5 classes.
    """
    probs, labels = video_scores(clip_probs, clip_video), video_labels(clip_labels, clip_video)
    crop_note = f", each the mean of {crops} spatial crops" if crops > 1 else ""
    level_clip = f"clip: every test clip scored alone{crop_note}"
    level_video = f"video: class probabilities averaged over {len(clip_video) // len(probs)} clips{crop_note}"
    metrics, level = {}, {}
    for k in (1, 5) if probs.shape[1] > 5 else (1,):
        metrics[f"video_top{k}"], level[f"video_top{k}"] = topk_accuracy(probs, labels, k), level_video
        metrics[f"clip_top{k}"], level[f"clip_top{k}"] = topk_accuracy(clip_probs, clip_labels, k), level_clip
    return metrics, level, probs, labels


# ----------------------------------------------------------------------------- files


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def progress(iterable: Iterable, *, desc: str, total: int | None = None) -> Iterator:
    """A tqdm bar on a terminal; elsewhere (logs, CI) a log line about every tenth of the way."""
    total = len(iterable) if total is None else total  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    every, t0 = max(1, total // 10), time.perf_counter()
    for i, x in enumerate(iterable, start=1):
        yield x
        if i % every == 0 or i == total:
            log.info("%s: %d/%d batches (%.0f s)", desc, i, total, time.perf_counter() - t0)


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: Path, *, title: str) -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG.

    Class names label the axes up to 40 classes; beyond that only the colours are drawn.
    """
    plt = _pyplot()
    m = matrix.double()
    rows = m / m.sum(1, keepdim=True).clamp_min(1)
    n = len(classes)
    side = min(14.0, 3.0 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        color = "white" if rows[i, j] > 0.5 else "black"
                        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_retrieval(queries: Sequence, neighbours: Sequence[Sequence], classes: Sequence[str], lengths: dict,
                   path: Path) -> None:  # fmt: skip
    """retrieval.png: one row per query video (VideoRecord), its middle frame then its nearest train
    videos' middle frames, best first, titled with class names; a neighbour's border is green when
    its class is the query's, red when not."""
    from mvcoding.video import read_frames

    def frame(r) -> np.ndarray:
        return read_frames(r.path, [lengths[r.video_id][0] // 2])[0]

    plt = _pyplot()
    ncols = 1 + max(len(n) for n in neighbours)
    h, w = frame(queries[0]).shape[:2]
    fig, axes = plt.subplots(len(queries), ncols, figsize=(1.9 * ncols, 0.6 + 1.9 * h / w * len(queries)),
                             squeeze=False)  # fmt: skip
    for row, (q, found) in enumerate(zip(queries, neighbours, strict=True)):
        for col in range(ncols):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            r = q if col == 0 else found[col - 1] if col - 1 < len(found) else None
            if r is None:
                ax.axis("off")
                continue
            ax.imshow(frame(r))
            color = "black" if col == 0 else "tab:green" if r.label == q.label else "tab:red"
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4 if col else 2)
            ax.set_title(f"query: {classes[r.label]}" if col == 0 else f"{col}: {classes[r.label]}", fontsize=7,
                         color=color)  # fmt: skip
    fig.suptitle("test videos (left) and their nearest train videos (video-level, cosine similarity)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


# ----------------------------------------------------------------------------- two-stream late fusion
def load_result(path) -> tuple[dict, dict, Path]:
    """(results.json, probs.pt, folder) of a linear/finetune result, given its results.json or its folder."""
    path = Path(str(path))
    folder = path if path.is_dir() else path.parent
    results, probs = folder / "results.json", folder / "probs.pt"
    if not results.is_file():
        raise UserError(f"{path}: no results.json there; pass the results.json of mvcoding eval linear/finetune")
    if not probs.is_file():
        raise UserError(f"{path}: no probs.pt beside it; fuse takes linear or finetune results (they save it)")
    try:
        return json.loads(results.read_text()), load_safe(probs), folder
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read {results} or {probs} ({type(e).__name__}); rerun that evaluation") from e


def fuse(result_a, result_b, out: Path | None = None) -> Path:
    """Two-stream late fusion: average the per-video class probabilities of two classifiers (say linear
    probes on the rgb and the flow encoders) and report the fused accuracy; returns the output folder.

    result_a/b: results.json paths (or their folders) of linear/finetune runs on the same test videos.
    Writes results.json, probs.pt, confusion.png and summary.md into `out` (default runs/fuse-<timestamp>).
    results.json's "checkpoint" is the streams' common checkpoint, or the list of both when they differ.
    """
    (ra, pa, fa), (rb, pb, fb) = load_result(result_a), load_result(result_b)
    for key in ("dataset", "split"):
        if pa[key] != pb[key]:
            raise UserError(f"cannot fuse: {fa} has {key} {pa[key]} but {fb} has {pb[key]}; fuse results of one split")
    if pa["video_ids"] != pb["video_ids"] or not torch.equal(pa["labels"], pb["labels"]):
        raise UserError(f"cannot fuse: {fa} and {fb} cover different test videos; evaluate both on the same split")
    if pa["classes"] != pb["classes"]:
        raise UserError(f"cannot fuse: {fa} and {fb} have different class lists")
    labels, probs = pa["labels"], (pa["probs"] + pb["probs"]) / 2
    metrics = {"video_top1": topk_accuracy(probs, labels, 1)}
    level = {"video_top1": "video: the mean of the two streams' per-video class probabilities"}
    clip_probs = None
    if (
        pa["clip_probs"] is not None
        and pb["clip_probs"] is not None
        and torch.equal(pa["clip_video"], pb["clip_video"])
    ):
        clip_probs = (pa["clip_probs"] + pb["clip_probs"]) / 2  # the same clips per video in both streams
        metrics["clip_top1"] = topk_accuracy(clip_probs, labels[pa["clip_video"]], 1)
        level["clip_top1"] = "clip: the mean of the two streams' per-clip class probabilities"
    metrics |= {"a_video_top1": ra["metrics"]["video_top1"], "b_video_top1": rb["metrics"]["video_top1"]}
    level |= {"a_video_top1": f"video: stream a alone ({fa})", "b_video_top1": f"video: stream b alone ({fb})"}

    same = ra["checkpoint"] == rb["checkpoint"]
    streams = [f"{'+'.join(p['views'])} ({p['task']})" for p in (pa, pb)]
    record = {
        "task": "fuse",
        "metrics": metrics,
        "level": level,
        "checkpoint": ra["checkpoint"] if same else [ra["checkpoint"], rb["checkpoint"]],
        "checkpoint_sha256": ra.get("checkpoint_sha256") if same else [r.get("checkpoint_sha256") for r in (ra, rb)],
        "split": pa["split"],
        "dataset": pa["dataset"],
        "sources": [str(fa / "results.json"), str(fb / "results.json")],
        "protocol": {"streams": streams, "rule": "mean of class probabilities"},
        "num_train": ra.get("num_train"),
        "num_test": len(labels),
        "num_classes": len(pa["classes"]),
    }
    out = Path(out) if out is not None else Path("runs") / f"fuse-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    saved = pa | {"probs": probs, "clip_probs": clip_probs, "task": "fuse", "views": streams}
    write_classification(out, record, saved, notes=[f"streams: {streams[0]} from {fa}; {streams[1]} from {fb}"])
    log.info("fused video top-1 %.1f%% (a %.1f%%, b %.1f%%): %s", 100 * metrics["video_top1"],
             100 * metrics["a_video_top1"], 100 * metrics["b_video_top1"], out / "results.json")  # fmt: skip
    return out
