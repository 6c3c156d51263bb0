"""Metrics (pure functions on tensors: scores (N, C), features (N, D)) and the checkpoint hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F


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


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
