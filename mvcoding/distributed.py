"""Thin helpers over torch.distributed: every collective is a no-op without a process group.

So the same trainer and objective code runs on one CPU, on one GPU, and under `torchrun` with
DistributedDataParallel; nothing here needs to be called differently in the single-process case.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_dist() -> bool:
    """True when a process group is initialised (we run under torchrun with several ranks)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """The number of ranks; 1 without a process group."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0: the process that logs and writes checkpoints."""
    return rank() == 0


def init_from_env(device: torch.device | str) -> None:
    """Initialise the process group when torchrun's environment (RANK, WORLD_SIZE) is set.

    Backend nccl for a CUDA `device` (after selecting the GPU named by LOCAL_RANK), gloo otherwise.
    Does nothing outside torchrun or when a group already exists.
    """
    if is_dist() or "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (n_r, ...) from every rank along dim 0, in rank order; identity without a group.

    Ranks may hold different n_r (the last batch of an epoch). No gradient flows through the result.
    """
    if not is_dist():
        return x
    x = x.detach().contiguous()
    # all_gather needs equal shapes: share the sizes, pad to the largest, trim after.
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)


def all_gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's `x` (n_r, D) concatenated in rank order, this rank's offset in it), with gradients:
    the backward pass sums each rank's gradient for a slice back into the rank that owns it. So a loss
    that scores local anchors against the gathered candidates, averaged over ranks by DDP, has the
    gradient of the same loss computed in one process over the global batch. (x, 0) without a group.
    Ranks may hold different n_r (the last batch of an epoch): padded for the collective, then trimmed.
    """
    if not is_dist():
        return x, 0
    import torch.distributed.nn.functional as dist_nn
    import torch.nn.functional as F

    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = F.pad(x, (0, 0, 0, max(sizes) - x.shape[0])) if x.shape[0] < max(sizes) else x.contiguous()
    parts = dist_nn.all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0), sum(sizes[: rank()])


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `x` over ranks (a new tensor) with gradients: the backward pass sums every
    rank's gradient of the result back into each rank's `x`, so a statistic of the global batch built from
    it differentiates as one process's would. `x` itself without a group."""
    if not is_dist():
        return x
    import torch.distributed.nn.functional as dist_nn

    return dist_nn.all_reduce(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `x` over ranks (a new tensor); `x` itself without a group."""
    if not is_dist():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / world_size()


def barrier() -> None:
    """Wait for every rank; no-op without a group."""
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if is_dist():
        dist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a picklable object); `obj` itself without a group."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
