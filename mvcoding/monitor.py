"""Learning made visible during pretraining: a weighted kNN classifier on the frozen encoders.

    monitor = make_monitor(cfg, views)            # once: records, eval clips, loaders
    monitor(model.encoders, device)               # every train.monitor_every epochs: {"knn/rgb": 0.42, ...}

Each view's encoder embeds one centre clip (eval transform, centre crop) of every video; the train
split is the gallery and the test split the queries. A query takes its k = 20 most cosine-similar
train videos, each voting for its class with weight exp(sim / 0.07), and predicts the class with
the largest summed vote (Wu et al. 2018, "Unsupervised feature learning via non-parametric
instance discrimination"). The score is the test top-1 accuracy in [0, 1], per view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import SequentialSampler

from mvcoding.data import make_loader, video_lengths
from mvcoding.datasets import load_dataset
from mvcoding.errors import UserError
from mvcoding.eval.features import EvalClips, run_clips
from mvcoding.registry import View

log = logging.getLogger(__name__)

Monitor = Callable[[dict[str, nn.Module], torch.device], dict[str, float]]


def knn_predict(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN labels of `queries` (M, D) against `gallery` (N, D) with labels (N,) -> (M,).

    Similarity is the cosine (rows are L2-normalised here). Each query's min(k, N) most similar
    gallery rows vote for their class with weight exp(sim / temperature); the prediction is the
    class with the largest summed vote. Ties: neighbours of equal similarity are taken in gallery
    order, and equal votes go to the lower class index. Queries run `chunk` at a time, so memory is
    O(chunk x N) whatever M.
    """
    gallery = F.normalize(gallery, dim=1)
    queries = F.normalize(queries, dim=1)
    preds = []
    for q in queries.split(chunk):
        sim = q @ gallery.T  # (m, N)
        top, idx = sim.sort(dim=1, descending=True, stable=True)
        top, idx = top[:, :k], idx[:, :k]  # (m, min(k, N)): the neighbours, most similar first
        votes = torch.zeros(len(q), num_classes, dtype=sim.dtype, device=sim.device)
        votes.scatter_add_(1, gallery_labels[idx], (top / temperature).exp())  # (m, C)
        preds.append(votes.argmax(dim=1))  # argmax returns the first maximum: the lower class
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=queries.device)


def monitor_every(cfg: DictConfig) -> int:
    """train.monitor_every: epochs between kNN scores, 0 for off (also when an older config lacks it)."""
    every = cfg.train.get("monitor_every", 0) or 0
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise UserError(f"train.monitor_every={every!r} is not valid; set it to a number of epochs (1, 5, ...) or 0")
    return every


def make_monitor(cfg: DictConfig, views: dict[str, View]) -> Monitor | None:
    """The kNN monitor of `views` on cfg.dataset: a function (encoders, device) -> {"knn/<view>": acc}.

    The records, eval clips and loaders are built here, once; a call decodes the clips and runs the encoders.
    None (and one log line) when the dataset has nothing to score: no test videos, no train videos,
    or fewer than two classes.
    """
    index = load_dataset(cfg.dataset)
    if not index.train or not index.test or len(index.classes) < 2:
        has = f"{len(index.train)} train / {len(index.test)} test videos and {len(index.classes)} classes"
        log.info(
            "kNN monitor off: %s split %d has %s; it needs labelled videos in both splits", index.name, index.split, has
        )
        return None
    for view in views.values():
        if view.check is not None:
            view.check(index.test)
    lengths = video_lengths(index.train + index.test, cfg)
    loaders = {}
    for split, records in (("train", index.train), ("test", index.test)):
        data = EvalClips(records, views, lengths, frames=cfg.data.frames, stride=cfg.data.stride, clips=1, crops=1)
        loaders[split] = make_loader(
            data,
            SequentialSampler(data),
            batch_size=int(cfg.train.batch_size),
            workers=cfg.data.workers,
            prefetch=cfg.data.prefetch,
            start_method=cfg.data.start_method,
            pin_memory=False,
            drop_last=False,
        )
    num_classes = len(index.classes)

    def monitor(encoders: dict[str, nn.Module], device: torch.device) -> dict[str, float]:
        t0 = time.perf_counter()
        modules = {n: encoders[n] for n in views}
        was_training = {n: m.training for n, m in modules.items()}
        try:
            feats = {
                split: run_clips(modules, loader, device, desc=f"kNN monitor {split}", views=views)
                for split, loader in loaders.items()
            }
        finally:
            for n, m in modules.items():
                m.train(was_training[n])
        result, offset = {}, 0
        for n, m in modules.items():
            # run_clips concatenates the views' features: (N, 1 clip, sum of feat_dim) -> this view's (N, D)
            part = {s: f["x"][:, 0, offset : offset + m.feat_dim] for s, f in feats.items()}
            offset += m.feat_dim
            pred = knn_predict(part["train"], feats["train"]["label"], part["test"], num_classes)
            result[f"knn/{n}"] = (pred == feats["test"]["label"]).double().mean().item()
        shown = ", ".join(f"{k[4:]} {100 * v:.1f}%" for k, v in result.items())
        seconds = time.perf_counter() - t0
        log.info("kNN monitor (k=20, test top-1, chance %.1f%%): %s (%.1f s)", 100 / num_classes, shown, seconds)
        return result

    return monitor


def knn_monitor(
    cfg: DictConfig, model_encoders: dict[str, nn.Module], views: dict[str, View], device: torch.device
) -> dict[str, float]:
    """One kNN evaluation {"knn/<view>": test top-1} ({} when the dataset has no labels to score)."""
    monitor = make_monitor(cfg, views)
    return monitor(model_encoders, device) if monitor is not None else {}
