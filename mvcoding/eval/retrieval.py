"""Retrieval: test videos query the train videos by cosine similarity of frozen features."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from mvcoding.eval.features import EvalSetup, clip_features, entry_features, prepare
from mvcoding.eval.metrics import nearest, recall_at_k, video_scores
from mvcoding.eval.report import (
    entry_folder,
    finish_entries,
    protocol,
    results_record,
    start_run,
    write_results,
    write_summary,
)
from mvcoding.plots import plot_retrieval

log = logging.getLogger(__name__)


def retrieval(cfg: DictConfig, out: Path) -> dict:
    """Test videos query the train videos by cosine similarity of clip-averaged frozen features, for
    each cfg.eval.views entry (every view's features extracted once); returns the first entry's metrics."""
    s = prepare(cfg, cfg.checkpoint, random_init=bool(cfg.eval.random_init))
    out = start_run(cfg, out)
    feats = clip_features(s, out)
    records = {}
    for entry, parts in s.entries.items():
        records[entry] = retrieve_entry(s, feats, entry, parts, folder=entry_folder(out, entry, s.entries))
    note = f"recall@k beyond the {len(s.index.train)} train videos counts the whole gallery"
    files = ["results.json", "features.pt", "retrieval.png"]
    return finish_entries(out, records, files=files, copy=["retrieval.png"], notes=[note])["metrics"]


def retrieve_entry(s: EvalSetup, feats: dict, entry: str, parts, *, folder: Path) -> dict:
    """Retrieval with one entry's slice of the features (clip_features); writes results.json,
    retrieval.png and summary.md into `folder`; returns its results.json record."""
    train, test = feats["train"], feats["test"]
    q_clip = entry_features(test["x"], test["dims"], parts).mean(1)  # (N, D): crops averaged
    g_clip = entry_features(train["x"], train["dims"], parts).mean(1)
    q_video, g_video = video_scores(q_clip, test["video"]), video_scores(g_clip, train["video"])
    q_labels = torch.tensor([r.label for r in s.index.test])
    g_labels = torch.tensor([r.label for r in s.index.train])
    e = s.cfg.eval
    ks = sorted({int(k) for k in e.retrieval.ks} | {1})
    video = recall_at_k(q_video, g_video, q_labels, g_labels, ks)
    clip = recall_at_k(q_clip, g_clip, test["label"], train["label"], ks)
    level_v = f"video: test videos (features averaged over {e.clips} clips) query train videos ({e.train_clips} clips)"
    level_c = "clip: every test clip queries every train clip"
    metrics = {f"recall@{k}": video[k] for k in ks} | {"video_top1": video[1]}
    metrics |= {f"clip_recall@{k}": clip[k] for k in ks} | {"clip_top1": clip[1]}
    level = {k: level_c if k.startswith("clip") else level_v for k in metrics}
    level["video_top1"] += " (1-nearest-neighbour accuracy, = recall@1)"
    level["clip_top1"] += " (1-nearest-neighbour accuracy, = clip_recall@1)"
    proto = protocol(s, parts, train_clips=int(e.train_clips), ks=ks, similarity="cosine")
    record = results_record(
        "retrieval", metrics, level, s.index, s.checkpoint, s.sha256, proto, entry=entry, dataset=s.dataset
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_results(folder, record)
    picks = torch.linspace(0, len(q_video) - 1, min(5, len(q_video))).round().long().unique()  # spread over the list
    neighbours = nearest(q_video[picks], g_video, 5).tolist()
    queries = [s.index.test[i] for i in picks.tolist()]
    gallery = [[s.index.train[j] for j in row] for row in neighbours]
    plot_retrieval(queries, gallery, s.index.classes, s.lengths, folder / "retrieval.png")
    note = f"recall@k beyond the {len(g_video)} train videos counts the whole gallery"
    write_summary(folder, record, files=["results.json", "retrieval.png"], notes=[note])
    recalls = ", ".join(f"{k} {100 * video[k]:.1f}%" for k in ks)
    log.info("retrieval %s: video recall@%s (%s)", entry, recalls, folder / "results.json")
    return record
