"""Encoders and projection heads for every view, built from the config."""

from __future__ import annotations

import torch
import torch.distributed.nn.functional
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mvcoding import distributed as dist
from mvcoding.errors import UserError
from mvcoding.registry import View, ViewContext, build_view


def view_context(cfg: DictConfig) -> ViewContext:
    return ViewContext(
        dataset=cfg.dataset.name,
        root=str(cfg.dataset.root),
        cache_dir=str(cfg.cache.dir),
        frames=cfg.data.frames,
        stride=cfg.data.stride,
        size=cfg.data.size,
        device=resolved_device(cfg.device),
    )


def resolved_device(name: str) -> str:
    """cfg.device with auto resolved: "cuda" when a GPU is available, else "cpu"."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def build_views(cfg: DictConfig, names=None) -> dict[str, View]:
    """Build the views of `cfg.views` (or only `names`), in config order."""
    ctx = view_context(cfg)
    names = list(cfg.views) if names is None else list(names)
    views = {}
    for n in names:
        settings = cfg.views[n]
        settings = OmegaConf.to_container(settings, resolve=True) if OmegaConf.is_config(settings) else settings
        if settings is not None and not isinstance(settings, dict):
            raise UserError(f"views.{n} must be a mapping of settings (or {{}} for the defaults), not {settings!r}")
        views[n] = build_view(n, ctx, **(settings or {}))
    return views


def build_encoder_of(name: str, view: View) -> nn.Module:
    """view.build_encoder(), its UserErrors prefixed with the view's key (`views.rgb.width=4 ...`)."""
    try:
        return view.build_encoder()
    except UserError as e:
        raise UserError(f"views.{name}: {e}") from e


class MultiViewModel(nn.Module):
    """One encoder f_i and one linear projection head per view.

    forward(batch) -> {view: z (B, D)}, L2-normalised embeddings; features(batch) -> {view: (B, F)}.
    Both take `views`, a subset of the model's views to run (default: all of them).

    center=True subtracts the batch mean of each view's projection before normalising (`center_embeddings`):
    memory-bank CMC needs it with GroupNorm encoders, whose embeddings start nearly identical.
    """

    def __init__(self, views: dict[str, View], dim: int, *, center: bool = False):
        super().__init__()
        self.center = center
        self.encoders = nn.ModuleDict({n: build_encoder_of(n, v) for n, v in views.items()})
        self.heads = nn.ModuleDict({n: nn.Linear(e.feat_dim, dim) for n, e in self.encoders.items()})

    def features(self, batch: dict, views: list[str] | None = None) -> dict:
        """{view: (B, F)}: the encoder features of batch[view] for each of `views`."""
        return {n: self.encoders[n](batch[n]) for n in (self.encoders if views is None else views)}

    def forward(self, batch: dict, views: list[str] | None = None, *, embed: bool = True) -> dict:
        """{view: z (B, D)}, L2-normalised projections of the features; embed=False: the features (B, F).

        The one entry point of every objective, so that DistributedDataParallel sees each forward.
        """
        features = self.features(batch, views)
        if not embed:
            return features
        h = {n: self.heads[n](f) for n, f in features.items()}  # (B, D) per view
        if self.center:
            h = {n: center_embeddings(v) for n, v in h.items()}
        return {n: nn.functional.normalize(v, dim=1) for n, v in h.items()}


def center_embeddings(h: Tensor) -> Tensor:
    """h - mean_b(h): the projections (B, D) minus their batch mean, before L2 normalisation.

    Why: encoders without batch statistics (GroupNorm) map every clip to nearly the same direction
    at initialisation (mean pairwise cosine 0.98 for small3d_gn on the synthetic set). With a memory
    bank the loss then has a sample-independent gradient that moves every embedding together, the
    bank fills with identical rows, every logit is equal and the loss sits at log(K + 1) with no
    gradient (a collapse). Removing the common component keeps the embeddings apart. Mean only, no
    variance scaling; under torchrun the mean of the global batch; a batch of one is left as it is.
    """
    if h.shape[0] < 2:
        return h
    if not dist.is_dist():
        return h - h.mean(0, keepdim=True)
    # the mean of the global batch, as one process would compute it; the all-reduce carries the gradient
    total = torch.distributed.nn.functional.all_reduce(h.sum(0, keepdim=True))  # (1, D), summed over ranks
    return h - total / (h.shape[0] * dist.world_size())
