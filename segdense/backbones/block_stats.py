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
        # Made on bn's device and in its dtype before the copy: loading float64 (or bf16) values into float32
        # tensors and converting back afterwards would lose digits (or mix dtypes in the next forward).
        like = bn.weight if bn.affine else bn.running_mean
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        new = cls(bn.num_features, process_group, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats, **factory)
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        for p_old, p_new in zip(bn.parameters(), new.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new


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


_STATS_EPS = 1e-5  # only to read the variance back from batch_norm_stats' 1/sqrt(var + eps)


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
    per channel (a float; a float64 tensor when all-reduced over ``group``)."""
    if x.is_cuda:
        # BatchNorm's own statistics kernel (channels-last aware, float32 accumulation): the generic
        # var_mean reduction over (N, H, W) of a channels-last tensor is far slower (docs/benchmarks.md).
        mean, invstd = torch.batch_norm_stats(x, _STATS_EPS)
        var = invstd.pow(-2).sub_(_STATS_EPS).clamp_min_(0)
    else:
        # BatchNorm's statistics kernel again (batch mean and biased variance): on CPU too much faster
        # than var_mean's strided reduction over (N, H, W) of a channels-last tensor.
        mean, var = torch.batch_norm_update_stats(x.to(stat_dtype(x)), None, None, 0.0)
    count = float(x.numel() // x.shape[1])
    if group is not None:
        # torch.full, not torch.tensor: a host-to-device copy would synchronise with the GPU.
        count = torch.full((), count, dtype=torch.float64, device=x.device)
        mean, var, count = all_reduce_moments(mean, var, count, group)
    return mean, var, count


def check_count(count: int | float, channels: int) -> None:
    if count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input with {int(count)} "
            f"value(s) per channel for {channels} channels"
        )


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count) -> None:
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
    unbiased = var * (count / (count - 1))
    rm, rv = bn.running_mean, bn.running_var
    rm.mul_(1 - momentum).add_(mean.to(rm.dtype), alpha=momentum)
    rv.mul_(1 - momentum).add_(unbiased.to(rv.dtype), alpha=momentum)


def update_running_stats_many(items, count) -> None:
    """``update_running_stats`` for many (bn, mean, var) at once: a handful of ``torch._foreach``
    launches instead of six small kernels per BatchNorm (launch overhead dominates a dense block's
    many small updates on a GPU). Falls back to one at a time for mixed or ``None`` momenta and
    all-reduced (tensor) counts."""
    items = [(bn, m, v) for bn, m, v in items if bn.track_running_stats and bn.running_mean is not None]
    if not items:
        return
    momenta = {bn.momentum for bn, _, _ in items}
    if len(momenta) > 1 or None in momenta or torch.is_tensor(count):
        for bn, m, v in items:
            update_running_stats(bn, m, v, count)
        return
    (momentum,) = momenta
    tracked = [bn.num_batches_tracked for bn, _, _ in items if bn.num_batches_tracked is not None]
    if tracked:
        torch._foreach_add_(tracked, 1)
    rms = [bn.running_mean for bn, _, _ in items]
    rvs = [bn.running_var for bn, _, _ in items]
    torch._foreach_mul_(rms, 1 - momentum)
    torch._foreach_add_(rms, [m.to(r.dtype) for (_, m, _), r in zip(items, rms)], alpha=momentum)
    torch._foreach_mul_(rvs, 1 - momentum)
    torch._foreach_add_(rvs, [v.to(r.dtype) for (_, _, v), r in zip(items, rvs)],
                        alpha=momentum * count / (count - 1))


class BlockStats:
    """Per-channel batch mean and biased variance of a dense block's buffer, recorded as its
    channels are written (the block input, then each layer's new channels)."""

    def __init__(self, channels: int, like: torch.Tensor, group=None, eps: float = 1e-5) -> None:
        dtype = stat_dtype(like)
        self.mean = torch.empty(channels, dtype=dtype, device=like.device)
        self.var = torch.empty(channels, dtype=dtype, device=like.device)
        self.inv = torch.empty(channels, dtype=dtype, device=like.device)  # 1 / sqrt(var + eps)
        self.eps = eps
        self.count: float | torch.Tensor = 0.0  # elements per channel (a tensor when all-reduced)
        self.group = group

    def record(self, x: torch.Tensor, start: int) -> None:
        mean, var, count = moments(x, self.group)
        self.set(start, mean, var, count)

    def set(self, start: int, mean: torch.Tensor, var: torch.Tensor, count) -> None:
        c = mean.numel()
        self.mean[start : start + c] = mean
        self.var[start : start + c] = var
        torch.rsqrt(var + self.eps, out=self.inv[start : start + c])
        self.count = count

    def invstd(self, channels: int, eps: float) -> torch.Tensor:
        if eps == self.eps:
            return self.inv[:channels]
        return (self.var[:channels] + eps).rsqrt()


class DeferredInputTerms:
    """The part of the norm1 input gradients that is affine in the block buffer, summed per channel.

    BatchNorm's backward gives each layer's input gradient as ``s * dy + coef * (x - mean) + const``
    per channel (``s = gamma * invstd``; ``coef`` and ``const`` from the reductions of dy). With shared
    statistics ``mean`` is the same for every layer that reads a channel, so the ``coef`` and ``const``
    of all those layers add up per channel, and the buffer term is added once per channel, when
    backward reaches the layer that wrote the channel (or the block input): O(L) passes over the
    buffer instead of one full input gradient per layer. Each layer adds only ``s * dy``.
    """

    def __init__(self, stats: BlockStats) -> None:
        self.mean = stats.mean
        self.coef = torch.zeros_like(stats.mean)
        self.const = torch.zeros_like(stats.mean)

    def add(self, coef: torch.Tensor, const: torch.Tensor) -> None:
        c = coef.numel()
        self.coef[:c] += coef
        self.const[:c] += const

    def apply(self, grad: torch.Tensor, buf: torch.Tensor, start: int, stop: int) -> None:
        """Add the summed terms of channels [start, stop) to ``grad`` (computed in the statistics'
        precision, so a bf16 buffer loses nothing to the centring)."""
        shape = (1, -1, 1, 1)
        centred = buf[:, start:stop].to(self.mean.dtype) - self.mean[start:stop].view(shape)
        terms = torch.addcmul(self.const[start:stop].view(shape), centred, self.coef[start:stop].view(shape))
        grad[:, start:stop].add_(terms)
