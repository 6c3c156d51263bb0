"""Encoders and projection heads for every view, built from the config."""

from __future__ import annotations

import torch
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


def pick_device(name: str) -> torch.device:
    """cfg.device as a torch.device (auto resolved); a UserError for cuda without a GPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA GPU is available; use device=cpu or device=auto")
    return torch.device(resolved_device(name))


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


HEAD_NORMS = ("none", "center", "batchnorm")  # objective.head_norm, besides auto


class MultiViewModel(nn.Module):
    """One encoder f_i and one linear projection head per view.

    forward(batch) -> {view: z (B, D)}, L2-normalised embeddings; features(batch) -> {view: (B, F)}.
    Both take `views`, a subset of the model's views to run (default: all of them).

    head_norm says what happens to each view's projection h (B, D) before the L2 normalisation (`project`):
    "none" (the original CMC); "center" subtracts its batch mean (`center_embeddings`): memory-bank CMC
    needs it with GroupNorm encoders, whose embeddings start nearly identical; "batchnorm" standardises
    each dimension over the batch, BatchNorm1d(D, affine=False) as SimSiam and MoCo v3 normalise the
    projector output (`GlobalBatchNorm`: under torchrun with the statistics of the global batch).
    """

    def __init__(self, views: dict[str, View], dim: int, *, head_norm: str = "none"):
        super().__init__()
        if head_norm not in HEAD_NORMS:
            raise UserError(f"head_norm={head_norm!r} is not valid; choose one of {', '.join(HEAD_NORMS)}")
        self.head_norm = head_norm
        self.encoders = nn.ModuleDict({n: build_encoder_of(n, v) for n, v in views.items()})
        self.heads = nn.ModuleDict({n: nn.Linear(e.feat_dim, dim) for n, e in self.encoders.items()})
        if head_norm == "batchnorm":  # checkpoint keys head_bn.<view>.running_mean, ...; no parameters
            self.head_bn = nn.ModuleDict({n: GlobalBatchNorm(dim, affine=False) for n in self.encoders})

    def features(self, batch: dict, views: list[str] | None = None) -> dict:
        """{view: (B, F)}: the encoder features of batch[view] for each of `views`."""
        return {n: self.encoders[n](batch[n]) for n in (self.encoders if views is None else views)}

    def project(self, features: dict) -> dict:
        """{view: h (B, D)}: the projections of `features` {view: (B, F)}, normalised as head_norm says,
        before the L2 normalisation."""
        h = {n: self.heads[n](f) for n, f in features.items()}  # (B, D) per view
        if self.head_norm == "center":
            return {n: center_embeddings(v) for n, v in h.items()}
        if self.head_norm == "batchnorm":
            return {n: self.head_bn[n](v) for n, v in h.items()}
        return h

    def forward(self, batch: dict, views: list[str] | None = None, *, embed: bool = True) -> dict:
        """{view: z (B, D)}, L2-normalised projections of the features; embed=False: the features (B, F).

        The one entry point of every objective, so that DistributedDataParallel sees each forward.
        """
        features = self.features(batch, views)
        if not embed:
            return features
        return {n: nn.functional.normalize(h, dim=1) for n, h in self.project(features).items()}


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
    total = dist.all_reduce_sum_with_grad(h.sum(0, keepdim=True))  # (1, D), summed over ranks
    return h - total / (h.shape[0] * dist.world_size())


def global_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    momentum: float,
    eps: float,
) -> Tensor:
    """x (B, C, *) normalised per channel with the mean and biased variance of the global batch, then
    scaled by weight (C,) and shifted by bias (C,) when given; the result has x's shape and dtype.

    Under torchrun the statistics are all-reduced over every rank's x with gradients, so N processes of
    batch B compute, and differentiate, what one process of batch N*B does; without a process group they
    are this batch's. Two passes (the sum, then the squared deviations from the global mean), not
    E[x^2] - E[x]^2, whose cancellation would part 2 processes from 1. The running statistics (C,), when
    given, are updated in place as nn.BatchNorm's: r <- (1 - momentum) r + momentum s, the variance
    unbiased with the global count n (var * n / (n - 1)).
    """
    dims = [0, *range(2, x.dim())]  # every axis but the channel's
    shape = (1, -1) + (1,) * (x.dim() - 2)  # (C,) -> broadcast over x
    xf = x.float()
    count = xf.new_tensor([x.numel() / x.shape[1]])  # values per channel here
    total = dist.all_reduce_sum_with_grad(torch.cat([xf.sum(dims), count]))  # (C + 1,) summed over ranks
    n = total[-1]
    if x.numel() // x.shape[1] < 2 and n.item() < 2:
        raise ValueError(f"expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    mean = total[:-1] / n  # (C,)
    centred = xf - mean.view(shape)
    var = dist.all_reduce_sum_with_grad(centred.square().sum(dims)) / n  # (C,) biased
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            unbiased = var * (n / (n - 1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    y = centred * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        y = y * weight.view(shape) + bias.view(shape)
    return y.to(x.dtype)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d/3d that, training under torchrun, normalises with the global batch's statistics
    (`global_batch_norm`): nn.SyncBatchNorm for every device, where nn.SyncBatchNorm refuses CPU tensors
    (gloo). Plain BatchNorm without a process group or in eval mode (the running statistics). The same
    parameters and buffers as nn.BatchNorm*d, so a checkpoint loads into either.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input (B, C, ...), got a {x.dim()}-D one")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or self.running_mean is None  # as nn.BatchNorm decides
        if not (batch_stats and dist.is_dist()):
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.training and self.track_running_stats
        return global_batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            momentum=momentum,
            eps=self.eps,
        )

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """`module` with every BatchNorm replaced by a GlobalBatchNorm that holds the same parameters and
        buffers (the same tensors: an optimiser built before keeps them); a BatchNorm `module` itself is
        returned converted, any other in place. Module names, so state_dict keys, are unchanged."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls | nn.SyncBatchNorm):
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            out.weight, out.bias = module.weight, module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
            return out
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module


def sync_batchnorm(module: nn.Module, *, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm normalising with the global batch's statistics under torchrun
    (train.sync_bn): nn.SyncBatchNorm on a GPU (its fused kernels), GlobalBatchNorm elsewhere. In place
    for a module that is not itself a BatchNorm; names, parameters and buffers are kept, so the
    checkpoint's keys (and an export's torchvision keys) are those of the plain model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return GlobalBatchNorm.convert(module)
