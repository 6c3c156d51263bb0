"""What an evaluation writes: the run directory (config.yaml, metrics.jsonl), results.json, probs.pt
and summary.md (the pictures beside them are drawn by mvcoding.plots).

results.json (one per evaluation; the contract keys are task, metrics, checkpoint and split)::

    {"task": "linear" | "finetune" | "retrieval" | "fuse",
     "metrics": {"video_top1": 0.83, "clip_top1": 0.71, ...},           fractions in [0, 1]
     "level": {"video_top1": "video: ...", "clip_top1": "clip: ...", ...}, the level of each metric
                                                                         ("video" or "clip") and how
     "checkpoint": PATH or null (random init), "checkpoint_sha256": HEX or null,
     "split": 1, "dataset": "ucf101", "protocol": {views, clips, crops, epochs, lr, ...},
     "dataset_root": "/data/ucf101", "dataset_sha256": HEX,             the data evaluated: the resolved
                                                                         root, and a hash of it, the videos,
                                                                         labels and list files (fuse
                                                                         refuses two that differ)
     "num_train": N, "num_test": M, "num_classes": C,
     "entry": "rgb",                                    the eval.views entry of metrics, level, protocol
     "entries": {"rgb": {"views": ["rgb"], "metrics": {...}},            every entry of eval.views, in
                 "flow": {...}, "rgb+flow": {"views": ["rgb", "flow"], "metrics": {...}}}}   its order

Entries. Each eval.views entry (a view, or views joined with + whose features are concatenated) is
evaluated on its own. The top level of the run directory is the first entry's evaluation, as a
one-entry run writes it (results.json's metrics, probs.pt, classifier.pt, confusion.png,
retrieval.png), with "entries" in results.json; with several entries each one (the first too) also
has a folder <entry>/ (e.g. rgb+flow/) with its own results.json ("entry", no "entries"), summary.md
and files, so `mvcoding eval fuse RUN/rgb RUN/flow` fuses two entries of one run. finetune trains
one encoder: the first entry's. fuse's results.json has neither key (entry_metrics reads either).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from mvcoding.eval.metrics import classification_metrics, confusion_matrix
from mvcoding.files import save_atomic, write_atomic, write_text_atomic
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
    entries = record.get("entries") or {}
    if len(entries) > 1:
        keys = list(dict.fromkeys(k for e in entries.values() for k in e["metrics"]))
        lines += ["Every entry of eval.views, evaluated on its own (files in <entry>/):", ""]
        lines += ["| entry | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, e in entries.items():
            cells = " | ".join(f"{e['metrics'][k]:.1%}" if k in e["metrics"] else "" for k in keys)
            lines.append(f"| {name} | {cells} |")
        lines += ["", f"The first entry, {record['entry']} (the files beside this one):", ""]
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


def results_record(
    task: str,
    metrics: dict,
    level: dict,
    index,
    checkpoint: str | None,
    sha256: str | None,
    protocol: dict,
    *,
    entry: str | None = None,
    dataset: dict | None = None,
) -> dict:
    """The results.json record (format in the module docstring) of one entry; index: the DatasetIndex
    evaluated; dataset: its mvcoding.eval.features.dataset_identity. finish_entries adds "entries"."""
    return {
        "task": task,
        "metrics": metrics,
        "level": level,
        "checkpoint": checkpoint,
        "checkpoint_sha256": sha256,
        "split": index.split,
        "dataset": index.name,
        **identity_keys(dataset),
        "protocol": protocol,
        "num_train": len(index.train),
        "num_test": len(index.test),
        "num_classes": len(index.classes),
    } | ({} if entry is None else {"entry": entry})


def identity_keys(dataset: dict | None) -> dict:
    """{"dataset_root", "dataset_sha256"} of a dataset_identity (what results.json and probs.pt carry)."""
    if dataset is None:
        return {}
    return {"dataset_root": dataset["root"], "dataset_sha256": dataset["dataset_sha256"]}


def entry_folder(out: Path, entry: str, entries) -> Path:
    """Where an entry's files go: `out` for the only entry, out/<entry>/ when there are several."""
    return Path(out) if len(entries) == 1 else Path(out) / entry


def finish_entries(
    out: Path, records: dict[str, dict], *, files: Sequence[str], copy: Sequence[str] = (), notes: Sequence[str] = ()
) -> dict:
    """The top level of an evaluation of the entries of `records` ({entry: its results.json record, in
    eval.views order}, each written in entry_folder): results.json (the first entry's record with
    "entries") and summary.md; with several entries, the first one's files `copy` from its folder too.
    Returns the top-level record."""
    first = next(iter(records))
    entries = {name: {"views": r["protocol"]["views"], "metrics": r["metrics"]} for name, r in records.items()}
    record = records[first] | {"entry": first, "entries": entries}
    if len(records) > 1:
        for name in copy:
            src = Path(out) / first / name
            write_atomic(Path(out) / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
    write_results(Path(out), record)
    write_summary(Path(out), record, files=files, notes=notes)
    return record


def entry_metrics(results: dict) -> dict[str, dict]:
    """{entry: metrics} of a results.json: its "entries", or for one without them (fuse, or written
    before entries) {its protocol's views joined with +: its metrics}."""
    if isinstance(results.get("entries"), dict):
        return {name: e.get("metrics", {}) for name, e in results["entries"].items()}
    return {"+".join((results.get("protocol") or {}).get("views") or []): results.get("metrics", {})}


def report_classification(
    out: Path,
    task: str,
    run: dict,
    index,
    *,
    checkpoint: str | None,
    sha256: str | None,
    protocol: dict,
    files: Sequence[str],
    entry: str | None = None,
    dataset: dict | None = None,
) -> dict:
    """Metrics of a classifier from its test-clip logits run["x"] (N, K, C) over K crops, with
    run["label"], run["video"] (N,): softmax, mean over crops (clip level), mean over clips (video
    level). Writes probs.pt, results.json, confusion.png and summary.md; returns the results.json record."""
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
    } | identity_keys(dataset)
    record = results_record(task, metrics, level, index, checkpoint, sha256, protocol, entry=entry, dataset=dataset)
    write_classification(out, record, saved, files=files)
    log.info(
        "%s %s: video top-1 %.1f%%, clip top-1 %.1f%% (%s)",
        task,
        entry or "+".join(protocol["views"]),
        100 * metrics["video_top1"],
        100 * metrics["clip_top1"],
        out / "results.json",
    )
    return record


def write_classification(out: Path, record: dict, saved: dict, *, files: Sequence[str] = (), notes=()) -> None:
    """probs.pt (`saved`), results.json (`record`), confusion.png (video level) and summary.md in `out`.

    saved: {"video_ids", "labels" (V,), "probs" (V, C), "clip_probs" (N, C) or None, "clip_video" (N,),
    "classes", "dataset", "split", "views", "task", "dataset_root", "dataset_sha256"}, what fuse reads back.
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


def report(s: EvalSetup, out: Path, task: str, run: dict, proto: dict, files: list[str], *, entry: str) -> dict:
    """Classification metrics and files of one entry from the test clips' logits run["x"] (N, K, C)
    (report_classification); returns its results.json record."""
    return report_classification(
        out,
        task,
        run,
        s.index,
        checkpoint=s.checkpoint,
        sha256=s.sha256,
        protocol=proto,
        files=files,
        entry=entry,
        dataset=s.dataset,
    )
