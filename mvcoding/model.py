"""Encoders and projection heads for every view, built from the config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from mvcoding.registry import View, ViewContext, build_view


def view_context(cfg: DictConfig) -> ViewContext:
    return ViewContext(
        dataset=cfg.dataset.name,
        root=str(cfg.dataset.root),
        cache_dir=str(cfg.cache.dir),
        frames=cfg.data.frames,
        stride=cfg.data.stride,
        size=cfg.data.size,
    )


def build_views(cfg: DictConfig, names=None) -> dict[str, View]:
    """Build the views of `cfg.views` (or only `names`), in config order."""
    ctx = view_context(cfg)
    names = list(cfg.views) if names is None else list(names)
    return {n: build_view(n, ctx, **OmegaConf.to_container(cfg.views[n] or {}, resolve=True)) for n in names}


class MultiViewModel(nn.Module):
    """One encoder f_i and one linear projection head per view.

    forward(batch) -> {view: z (B, D)}, L2-normalised embeddings; features(batch) -> {view: (B, F)}.
    Both take `views`, a subset of the model's views to run (default: all of them).
    """

    def __init__(self, views: dict[str, View], dim: int):
        super().__init__()
        self.encoders = nn.ModuleDict({n: v.build_encoder() for n, v in views.items()})
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
        return {n: nn.functional.normalize(self.heads[n](f), dim=1) for n, f in features.items()}
