"""Two-stream late fusion of two linear/finetune results (their probs.pt)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from mvcoding.errors import UserError
from mvcoding.eval.metrics import topk_accuracy
from mvcoding.eval.report import write_classification
from mvcoding.files import load_safe

log = logging.getLogger(__name__)


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
        record, saved = json.loads(results.read_text()), load_safe(probs)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read {results} or {probs} ({type(e).__name__}); rerun that evaluation") from e
    if not isinstance(record, dict) or not isinstance(saved, dict):
        raise UserError(f"{results} or {probs} is not what mvcoding eval linear/finetune writes; rerun that evaluation")
    return record, saved, folder


def check_same_data(ra: dict, fa: Path, rb: dict, fb: Path) -> None:
    """UserError when two results.json were evaluated on different data: another dataset root, or other
    videos, labels or list files (their "dataset_root" and "dataset_sha256", see mvcoding.eval.report).
    A result written before these keys is only checked by its dataset name, split, videos and labels."""
    for key, what in (("dataset_root", "dataset root"), ("dataset_sha256", "dataset (videos, labels, list files)")):
        a, b = ra.get(key), rb.get(key)
        if a is None or b is None:
            log.warning("%s or %s does not record its %s; fusing on the names of its videos alone", fa, fb, key)
        elif a != b:
            shown = (a, b) if key == "dataset_root" else (a[:12] + "...", b[:12] + "...")
            raise UserError(
                f"cannot fuse: {fa} was evaluated on {what} {shown[0]} but {fb} on {shown[1]}; "
                "fuse results of the same dataset (evaluate both streams with the same dataset.root "
                "and list files)"
            )


def fuse(result_a, result_b, out: Path | None = None) -> Path:
    """Two-stream late fusion: average the per-video class probabilities of two classifiers (say linear
    probes on the rgb and the flow encoders) and report the fused accuracy; returns the output folder.

    result_a/b: results.json paths (or their folders) of linear/finetune runs on the same test videos;
    the <entry>/ folders of a linear run with several eval.views entries are results too (RUN/rgb RUN/flow).
    Writes results.json, probs.pt, confusion.png and summary.md into `out` (default runs/fuse-<timestamp>).
    results.json's "checkpoint" is the streams' common checkpoint, or the list of both when they differ.
    """
    (ra, pa, fa), (rb, pb, fb) = load_result(result_a), load_result(result_b)
    check_same_data(ra, fa, rb, fb)
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
        **{k: ra[k] for k in ("dataset_root", "dataset_sha256") if k in ra},
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
    log.info(
        "fused video top-1 %.1f%% (a %.1f%%, b %.1f%%): %s",
        100 * metrics["video_top1"],
        100 * metrics["a_video_top1"],
        100 * metrics["b_video_top1"],
        out / "results.json",
    )
    return out
