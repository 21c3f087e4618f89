"""Batch statistics shared across a dense block, for the memory-efficient path.

In training mode every layer's norm1 normalises all channels written before it. A channel's batch
mean and variance are the same for every layer that reads it (same batch, same stored values; only
each layer's affine parameters differ), so they are computed once, when the channel is written:
the block input first, then each layer's ``k`` new channels. That is O(L) reductions per block
instead of plain BatchNorm's O(L^2).

Across processes (``SyncBatchNorm`` layers under an initialised process group) the per-channel
sums are all-reduced once per written channel group: O(L) collectives per block, each a few
kilobytes. ``torch.distributed.all_reduce`` runs on gloo too, so this also works on CPU, where
PyTorch's own ``SyncBatchNorm`` cannot.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn


class DenseSyncBatchNorm(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose batch statistics the memory-efficient dense block all-reduces over
    ``process_group`` (default: the world), like ``SyncBatchNorm``, but which DDP accepts on CPU
    (it refuses ``SyncBatchNorm`` there). Anywhere else (eval mode, the plain graph) it is a plain
    ``BatchNorm2d`` with local statistics. Same parameters, buffers and state_dict keys."""

    def __init__(self, num_features: int, process_group=None, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.process_group = process_group

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, process_group=None) -> "DenseSyncBatchNorm":
        new = cls(bn.num_features, process_group, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats)
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        return new.to(device=bn.weight.device if bn.affine else None)


def sync_group(norms) -> Optional[object]:
    """The process group to all-reduce statistics over, or ``None`` for local statistics: the
    group of the (``SyncBatchNorm`` or ``DenseSyncBatchNorm``) layers when a process group with
    more than one rank is up."""
    if not all(isinstance(n, (nn.SyncBatchNorm, DenseSyncBatchNorm)) for n in norms):
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    groups = {id(n.process_group) for n in norms}
    if len(groups) != 1:
        raise ValueError("all SyncBatchNorm layers of a dense block must use the same process group")
    group = norms[0].process_group or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics are kept in float32 (float64 for float64 activations), as BatchNorm does."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def all_reduce_moments(
    mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor, group
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine per-process (mean, biased variance, count) into the global ones with one
    all-reduce of per-channel sums and sums of squares (in float64: no cancellation)."""
    c = mean.numel()
    n = count.to(torch.float64)
    m = mean.to(torch.float64)
    packed = torch.cat([m * n, (var.to(torch.float64) + m * m) * n, n.reshape(1)])
    dist.all_reduce(packed, group=group)
    total = packed[-1]
    g_mean = packed[:c] / total
    g_var = (packed[c : 2 * c] / total - g_mean * g_mean).clamp_min_(0)
    return g_mean.to(mean.dtype), g_var.to(var.dtype), total


def moments(x: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of ``x`` (N, C, H, W) and the element count
    per channel, global over ``group`` when given."""
    var, mean = torch.var_mean(x.to(stat_dtype(x)), dim=(0, 2, 3), unbiased=False)
    count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)
    if group is not None:
        mean, var, count = all_reduce_moments(mean, var, count, group)
    return mean, var, count


def check_count(count: int | float, channels: int) -> None:
    if count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input with {int(count)} "
            f"value(s) per channel for {channels} channels"
        )


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
    """What ``nn.BatchNorm2d.forward`` does to the buffers in training mode: ``num_batches_tracked``
    += 1 and a momentum (or cumulative-average, ``momentum=None``) update with the unbiased
    batch variance."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    unbiased = var * (count / (count - 1)).to(var.dtype)
    rm, rv = bn.running_mean, bn.running_var
    rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
    rv.mul_(1 - momentum).add_(unbiased.to(rv.dtype), alpha=momentum)


class BlockStats:
    """Per-channel batch mean and biased variance of a dense block's buffer, recorded as its
    channels are written (the block input, then each layer's new channels)."""

    def __init__(self, channels: int, like: torch.Tensor, group=None) -> None:
        dtype = stat_dtype(like)
        self.mean = torch.empty(channels, dtype=dtype, device=like.device)
        self.var = torch.empty(channels, dtype=dtype, device=like.device)
        self.count = torch.zeros((), dtype=torch.float64, device=like.device)
        self.group = group

    def record(self, x: torch.Tensor, start: int) -> None:
        mean, var, count = moments(x, self.group)
        self.set(start, mean, var, count)

    def set(self, start: int, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        c = mean.numel()
        self.mean[start : start + c] = mean
        self.var[start : start + c] = var
        self.count = count

    def invstd(self, channels: int, eps: float) -> torch.Tensor:
        return (self.var[:channels] + eps).rsqrt()
