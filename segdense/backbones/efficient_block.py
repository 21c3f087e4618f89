"""Memory-efficient dense block (after Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets").

A dense block's plain autograd graph keeps, for every layer, a fresh concatenation of all earlier
feature maps and its BN-ReLU output, so training memory grows quadratically with depth. Here the
whole block is one autograd Function that

* writes the block input and every layer's new channels into one pre-allocated buffer, so a layer's
  input is a view (no concatenation copy) and the buffer is also the block's output;
* computes each channel's batch statistics once, when it is written (``block_stats``): every norm1
  derives its normalisation from them, O(L) reductions per block instead of O(L^2), and under
  ``SyncBatchNorm`` one all-reduce per written channel group;
* keeps only that buffer, each layer's 1x1-conv output (bn_size * k channels) and the statistics for
  backward: BN-ReLU outputs are recomputed from the shared storage, one layer at a time, and the
  convolutions are never recomputed (that is where the time goes);
* adds the part of the norm1 input gradients that is affine in the buffer once per channel, summed
  over the layers that read it (``block_stats.DeferredInputTerms``), instead of once per layer;
* updates every BN's running statistics exactly once, in forward, as ``nn.BatchNorm2d`` does.

Gradients equal the plain graph's up to floating-point rounding (same operations, in another order).
"""
from __future__ import annotations

import os
from typing import Protocol, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from .block_stats import (
    BlockStats, DeferredInputTerms, DenseSyncBatchNorm, check_count, moments, sync_group,
    update_running_stats_many,
)
from .dense_concat import block_buffer
from .random_masks import dropout_mask

_conv_backward = torch.ops.aten.convolution_backward
_bn_backward = torch.ops.aten.native_batch_norm_backward


class DenseLayerLike(Protocol):
    """What the efficient block needs of a dense layer (``densenet.DenseLayer`` is one): BN-ReLU-conv stages
    (see :func:`stages`), the second absent (``None``) in a layer without a bottleneck."""

    norm1: nn.BatchNorm2d
    conv1: nn.Conv2d
    norm2: nn.BatchNorm2d | None
    conv2: nn.Conv2d | None
    drop_rate: float


def bn_relu(
    x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, invstd: torch.Tensor,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    """ReLU(BN(x)) with given batch statistics (float32/64). ``x`` may be a channel slice of the
    block buffer; the output is a fresh compact tensor in ``x``'s memory format. Full-precision
    inputs take a per-channel scale and shift on the slice itself (on CPU faster than copying the
    slice for BatchNorm): one ``addcmul`` on channels-last data, where channels are innermost, but a
    multiply and an in-place add on NCHW planes, where ``addcmul``'s broadcast kernel is slower
    (docs/benchmarks.md has both measurements). bf16/fp16 inputs go through BatchNorm's own kernel,
    which computes in float32 (a low-precision scale and shift would lose digits to cancellation)."""
    if x.dtype in (torch.float32, torch.float64):
        scale = invstd if bn.weight is None else invstd * bn.weight
        shift = -mean * scale if bn.bias is None else bn.bias - mean * scale
        shape = (1, -1, 1, 1)
        scale, shift = scale.to(x.dtype).view(shape), shift.to(x.dtype).view(shape)
        if x.stride(1) == 1:
            return torch.addcmul(shift, x, scale).relu_()
        return torch.mul(x, scale).add_(shift).relu_()
    if var is None:
        var = invstd.double().pow(-2).sub_(bn.eps).to(invstd.dtype)
    # BatchNorm's mixed-precision kernel takes float32 parameters beside bf16/fp16 data (a bf16 model's too).
    weight, bias = (None if t is None else t.to(mean.dtype) for t in (bn.weight, bn.bias))
    return torch.batch_norm(_compact(x), weight, bias, mean, var, False, 0.0, bn.eps, True).relu_()


def _compact(view: torch.Tensor) -> torch.Tensor:
    """A compact copy of a channel slice of the block buffer, in the buffer's memory format.
    BatchNorm's CPU backward takes a generic kernel on a strided view, several times slower than a
    copy plus its contiguous kernel; converting an NCHW slice to channels-last instead (as this did
    before) made a transposing copy, a mixed-layout backward and a strided accumulation
    (docs/benchmarks.md)."""
    if view.is_contiguous(memory_format=torch.channels_last) or view.is_contiguous():
        return view
    if view.stride(1) == 1:  # channels innermost: a channels-last buffer
        return view.contiguous(memory_format=torch.channels_last)
    return view.contiguous()  # NCHW planes, strided only across the batch


def _weight(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
    # Under autocast the activations may be bf16/fp16 while parameters stay fp32.
    return conv.weight.to(like.dtype)


def _bias(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor | None:
    return None if conv.bias is None else conv.bias.to(like.dtype)


def stages(layer: DenseLayerLike) -> list[tuple[nn.BatchNorm2d, nn.Conv2d]]:
    """A dense layer's (BatchNorm, conv) pairs, each BN-ReLU-conv: ``norm1``/``conv1`` read the block's
    concatenation; a bottleneck layer (DenseNet-BC) adds ``norm2``/``conv2`` on the 1x1 conv's output, a
    layer without one (FC-DenseNet) has ``norm2 = None`` and its ``conv1`` makes the new channels."""
    if layer.norm2 is None:
        return [(layer.norm1, layer.conv1)]
    return [(layer.norm1, layer.conv1), (layer.norm2, layer.conv2)]


def batch_statistics(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` normalises with the batch's statistics, as ``nn.BatchNorm2d.forward`` decides: in training
    mode, or when it keeps no running statistics. A BatchNorm in eval mode inside a training model (frozen-BN
    fine-tuning, ``norm_eval``) uses its running statistics and updates nothing."""
    return bn.training or bn.running_mean is None


def running_statistics(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, var, invstd) of a frozen BatchNorm: its running statistics."""
    return bn.running_mean, bn.running_var, (bn.running_var + bn.eps).rsqrt()


def relu_backward_(dy: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """ReLU's backward in place on ``dy`` (the fresh input gradient of a convolution, read by nothing else), given
    the ReLU output ``a``; ``a=None``: ``dy`` is already masked."""
    if a is None:
        return dy
    return torch.ops.aten.threshold_backward.grad_input(dy, a, 0, grad_input=dy)


def frozen_bn_relu_backward(dy, x, a, bn, mean, invstd, into=None):
    """Gradients of ReLU(BN(x)) for a BatchNorm that normalises with fixed statistics: the input gradient is the
    per-channel scale times dy (nothing flows through the statistics); gamma's and beta's are the sums of
    dy * x_hat and dy. Returns (input gradient, or ``None`` after adding it to ``into``; gamma's; beta's)."""
    dy = relu_backward_(dy, a)
    shape = (1, -1, 1, 1)
    gw = gb = None
    if bn.affine:
        gb = dy.sum((0, 2, 3), dtype=mean.dtype)
        x_hat = (x.to(mean.dtype) - mean.view(shape)) * invstd.view(shape)
        gw = (dy * x_hat).sum((0, 2, 3))
        gw, gb = gw.to(bn.weight.dtype), gb.to(bn.bias.dtype)
    scale = (invstd if bn.weight is None else bn.weight * invstd).to(dy.dtype).view(shape)
    if into is None:
        return dy * scale, gw, gb
    into.addcmul_(dy, scale)
    return None, gw, gb


def _bn_train(x: torch.Tensor, bn: nn.BatchNorm2d, group, ops, pending: list):
    """BN2 with batch statistics; returns (ReLU output, batch mean, batch invstd, elements per channel). Local
    statistics with PyTorch ops take its fused kernel, which also updates the running statistics of a training
    BatchNorm; otherwise the statistics are computed (and all-reduced) first and a training BatchNorm's
    (bn, mean, var) is appended to ``pending`` for one batched running-statistics update."""
    if group is None and ops.name == "torch":
        momentum = 0.0 if bn.momentum is None else bn.momentum
        running_mean = running_var = None
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:
                    momentum = 1.0 / float(bn.num_batches_tracked)
            running_mean, running_var = bn.running_mean, bn.running_var
        out, mean, invstd = torch.native_batch_norm(
            x, bn.weight, bn.bias, running_mean, running_var, True, momentum, bn.eps
        )
        return out.relu_(), mean, invstd, float(x.numel() // x.shape[1])
    mean, var, count = moments(x, group)
    if bn.training:
        pending.append((bn, mean, var))
    invstd = (var + bn.eps).rsqrt()
    return ops.bn_relu(x, bn, mean, invstd), mean, invstd, count


def _stat_weight(bn: nn.BatchNorm2d, mean: torch.Tensor) -> torch.Tensor:
    """gamma in the statistics' dtype, as BatchNorm's mixed-precision backward kernel takes it."""
    return bn.weight.to(mean.dtype)


def _input_grad_terms(gw, gb, bn, mean, invstd, count, group):
    """BatchNorm's input gradient as ``scale * dy + coef * (x - mean) + const`` per channel, from
    the sums of dy * x_hat (``gw``) and of dy (``gb``); over ``group`` they are all-reduced first
    (in float64), as ``SyncBatchNorm``'s backward does."""
    if group is None:
        mean_dy, mean_dy_xhat = gb.to(mean.dtype) / count, gw.to(mean.dtype) / count
    else:
        sums = torch.cat([gb, gw]).to(torch.float64)
        dist.all_reduce(sums, group=group)
        c = gb.numel()
        mean_dy, mean_dy_xhat = (sums[:c] / count).to(mean.dtype), (sums[c:] / count).to(mean.dtype)
    scale = invstd if bn.weight is None else bn.weight * invstd
    # dx = scale * (dy - mean_dy - x_hat * mean_dy_xhat), with x_hat = (x - mean) * invstd
    return scale, -scale * invstd * mean_dy_xhat, -scale * mean_dy


def _bn_backward_synced(dy, x, bn, mean, invstd, count, group):
    """BN backward with the reductions (sum of dy, sum of dy * x_hat) all-reduced, as
    ``SyncBatchNorm``'s backward does; the parameter gradients stay local (DDP averages them)."""
    _, gw, gb = _bn_backward(dy, x, _stat_weight(bn, mean), None, None, mean, invstd, True, bn.eps,
                             [False, True, True])
    scale, coef_x, const = _input_grad_terms(gw, gb, bn, mean, invstd, count, group)
    shape = (1, -1, 1, 1)
    dx = torch.addcmul((const - mean * coef_x).to(dy.dtype).view(shape), dy, scale.to(dy.dtype).view(shape))
    return dx.addcmul_(x, coef_x.to(dy.dtype).view(shape)), gw, gb


def _bn_backward_any(dy, x, bn, mean, invstd, count, group):
    if group is None:
        gx, gw, gb = _bn_backward(dy, x, _stat_weight(bn, mean), None, None, mean, invstd, True, bn.eps,
                                  [True, True, True])
        return gx, gw.to(bn.weight.dtype), gb.to(bn.bias.dtype)
    return _bn_backward_synced(dy, x, bn, mean, invstd, count, group)


class TorchOps:
    """BN-ReLU forward and backward with PyTorch operators (CPU, and CUDA without Triton)."""

    name = "torch"
    defers_input_terms = True  # norm1's input gradient: see bn_relu_backward's ``deferred``

    @staticmethod
    def backward_input(view):
        """The layer input as backward reads it twice (recompute, BatchNorm backward): one compact
        copy of a channels-last slice, since BatchNorm's backward kernel is slow on the view."""
        return _compact(view)

    @staticmethod
    def bn_relu(x, bn, mean, invstd, var=None):
        return bn_relu(x, bn, mean, invstd, var)

    @staticmethod
    def bn_relu_backward(dy, x, a, bn, mean, invstd, count, group, into=None, deferred=None):
        """Gradients of ReLU(BN(x)) given dy: (input gradient, or ``None`` after adding it to
        ``into``; gamma's; beta's). With ``deferred`` (a :class:`DeferredInputTerms` over the
        statistics ``mean`` comes from) only ``s * dy`` is added to ``into`` and the rest of the
        input gradient, affine in x per channel, is summed there: BatchNorm's backward then only
        reduces (docs/benchmarks.md measures the saving)."""
        dy = relu_backward_(dy, a)
        if deferred is None:
            gx, gw, gb = _bn_backward_any(dy, _compact(x), bn, mean, invstd, count, group)
            if into is None:
                return gx, gw, gb
            into.add_(gx)
            return None, gw, gb
        _, gw, gb = _bn_backward(dy, _compact(x), _stat_weight(bn, mean), None, None, mean, invstd, True, bn.eps,
                                 [False, True, True])
        scale, coef, const = _input_grad_terms(gw, gb, bn, mean, invstd, count, group)
        into.addcmul_(dy, scale.to(dy.dtype).view(1, -1, 1, 1))
        deferred.add(coef=coef, const=const)
        return None, gw, gb


class TritonOps:
    """The same operations as fused Triton kernels (``fused_kernels``) on channels-last data:
    BN-ReLU read straight from the block buffer (no compact copy, the affine computed in the
    kernel), and BN-ReLU backward as one reduction and one elementwise kernel that accumulates into
    the block's gradient buffer."""

    name = "triton"
    defers_input_terms = False  # the elementwise kernel accumulates the whole input gradient

    @staticmethod
    def backward_input(view):
        return view  # the kernels read the buffer slice in place

    @staticmethod
    def _rows(t):
        from . import fused_kernels as K

        return t if K.rows(t) is not None else t.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _vectors(bn, mean, invstd):
        return mean.contiguous(), invstd.contiguous(), bn.weight, bn.bias

    @classmethod
    def bn_relu(cls, x, bn, mean, invstd, var=None):
        from . import fused_kernels as K

        return K.bn_relu(cls._rows(x), *cls._vectors(bn, mean, invstd))

    @classmethod
    def bn_relu_backward(cls, dy, x, a, bn, mean, invstd, count, group, into=None, deferred=None):
        from . import fused_kernels as K

        x, dy = cls._rows(x), cls._rows(dy)
        vec = cls._vectors(bn, mean, invstd)
        sums = K.bn_relu_backward_reduce(dy, x, *vec)
        gw, gb = sums[1].to(bn.weight.dtype), sums[0].to(bn.bias.dtype)  # local, as SyncBatchNorm
        if group is not None:
            red = sums.to(torch.float64)
            dist.all_reduce(red, group=group)
            sums, count = (red / count).float(), 1.0
        in_place = into is not None and K.rows(into) is not None
        out = into if in_place else torch.empty(x.shape, dtype=dy.dtype, device=x.device,
                                                memory_format=torch.channels_last)
        K.bn_relu_backward_elemt(dy, x, out, *vec, sums, count, accumulate=in_place)
        if into is None:
            return out, gw, gb
        if not in_place:  # an NCHW gradient buffer: add the compact result
            into.add_(out)
        return None, gw, gb


def _norm1_statistics(bn: nn.BatchNorm2d, stats: BlockStats | None, channels: int):
    """(mean, var, invstd) that ``norm1`` normalises the block's first ``channels`` channels with: the shared
    batch statistics, or a frozen BatchNorm's own running ones."""
    if batch_statistics(bn):
        return stats.mean[:channels], stats.var[:channels], stats.invstd(channels, bn.eps)
    return running_statistics(bn)


def _conv(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    return conv._conv_forward(a, _weight(conv, a), _bias(conv, a))


def _conv_grads(g: torch.Tensor, a: torch.Tensor, conv: nn.Conv2d) -> tuple:
    """(input gradient, weight gradient or ``None`` when frozen, bias gradient or ``None``) of ``conv`` at ``a``."""
    has_bias = conv.bias is not None
    gin, gw, gb = _conv_backward(
        g, a, _weight(conv, a), [conv.out_channels] if has_bias else None, list(conv.stride),
        list(conv.padding), list(conv.dilation), False, [0, 0], conv.groups,
        [True, conv.weight.requires_grad, has_bias],
    )
    gw = None if gw is None else gw.to(conv.weight.dtype)
    return gin, gw, (gb.to(conv.bias.dtype) if has_bias else None)


def _param_grads(norm: nn.BatchNorm2d, norm_grads: tuple, conv: nn.Conv2d, gw, gbias) -> list:
    """One stage's gradients in :func:`_params` order, each in its parameter's dtype."""
    gn = [g.to(p.dtype) for g, p in zip(norm_grads, (norm.weight, norm.bias))]
    return [*gn, gw] + ([gbias] if conv.bias is not None else [])


def _layer_forward(x, layer, stats, group, ops, pending):
    """One dense layer in training: (its new channels, the bottleneck's 1x1-conv output kept for backward or
    ``None``, the second norm's (mean, invstd, count) or ``None``). Training BatchNorms are appended to ``pending``
    for the block's running-statistics update."""
    (n1, conv1), *rest = stages(layer)
    mean1, var1, inv1 = _norm1_statistics(n1, stats, x.shape[1])
    if n1.training:
        pending.append((n1, mean1, var1))
    a1 = ops.bn_relu(x, n1, mean1, inv1, var1)
    z1 = _conv(conv1, a1)
    del a1
    if not rest:
        return z1, None, None
    ((n2, conv2),) = rest
    if batch_statistics(n2):
        a2, m2, s2, count2 = _bn_train(z1, n2, group, ops, pending)
    else:
        m2, v2, s2 = running_statistics(n2)
        a2, count2 = ops.bn_relu(z1, n2, m2, s2, v2), None
    return _conv(conv2, a2), z1, (m2, s2, count2)


def _layer_backward(ctx, i: int, g_out, x, z1, into, deferred) -> list:
    """Backward of dense layer ``i``: adds its input gradient into ``into`` (the block gradient's first channels)
    and returns its parameter gradients in :func:`_params` order. BN-ReLU outputs are recomputed."""
    layer, ops, group, stats = ctx.layers[i], ctx.ops, ctx.group, ctx.stats
    (n1, conv1), *rest = stages(layer)
    grads: list = []
    if rest:  # the bottleneck's second half: BN2-ReLU recomputed from the saved 1x1-conv output
        ((n2, conv2),) = rest
        m2, s2, count2 = ctx.norm2_stats[i]
        a2 = ops.bn_relu(z1, n2, m2, s2)
        ga2, gw2, gbias2 = _conv_grads(g_out, a2, conv2)
        if batch_statistics(n2):
            g_out, *norm2 = ops.bn_relu_backward(ga2, z1, a2, n2, m2, s2, count2, group)
        else:
            g_out, *norm2 = frozen_bn_relu_backward(ga2, z1, a2, n2, m2, s2)
        grads = _param_grads(n2, norm2, conv2, gw2, gbias2)
        del a2, ga2
    # First half: BN1-ReLU recomputed from the shared buffer (with the shared statistics when they train).
    # The ReLU output is read from the buffer slice and freed (its mask applied) before BatchNorm's backward takes
    # its compact copy of the slice: one layer-input-sized tensor fewer at the widest layer's peak
    # (docs/fcdensenet.md).
    m1, v1, s1 = _norm1_statistics(n1, stats, x.shape[1])
    a1 = ops.bn_relu(x, n1, m1, s1, v1)
    ga1, gw1, gbias1 = _conv_grads(g_out, a1, conv1)
    del g_out
    ga1 = relu_backward_(ga1, a1)
    del a1
    x1 = ops.backward_input(x)
    if batch_statistics(n1):
        _, *norm1 = ops.bn_relu_backward(ga1, x1, None, n1, m1, s1, stats.count, group, into=into, deferred=deferred)
    else:
        _, *norm1 = frozen_bn_relu_backward(ga1, x1, None, n1, m1, s1, into=into)
    return _param_grads(n1, norm1, conv1, gw1, gbias1) + grads


def _block_count(stats, norm2_stats) -> float | torch.Tensor | None:
    """Elements per channel behind the block's batch statistics (all-reduced: a tensor), ``None`` if none."""
    if stats is not None:
        return stats.count
    return next((c for s in norm2_stats if s is not None for c in s[2:] if c is not None), None)


class _EfficientDenseBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layers: Sequence[DenseLayerLike], group, ops, *params: torch.Tensor):
        n, c0, h, w = x.shape
        k = stages(layers[0])[-1][1].out_channels
        if group is None and any(batch_statistics(bn) for l in layers for bn, _ in stages(l)):
            check_count(n * h * w, c0)
        buf = block_buffer(x, c0 + len(layers) * k)
        # Shared statistics, when some norm1 normalises with the batch's (frozen ones use their own running ones).
        stats = None
        if any(batch_statistics(l.norm1) for l in layers):
            stats = BlockStats(buf.shape[1], x, group, eps=layers[0].norm1.eps)
            stats.record(x, 0)
        saved, norm2_stats, masks, pending = [], [], [], []
        for i, layer in enumerate(layers):
            c_in = c0 + i * k
            out, z1, s2 = _layer_forward(buf[:, :c_in], layer, stats, group, ops, pending)
            mask = None
            if layer.drop_rate > 0:
                mask = dropout_mask(out, layer.drop_rate)
                out = out.mul_(mask)
            buf[:, c_in : c_in + k].copy_(out)
            if stats is not None and i + 1 < len(layers):  # the last layer's channels are read by no norm1 here
                stats.record(out, c_in)
            saved.append(z1)
            norm2_stats.append(s2)
            masks.append(mask)
        # Every training BatchNorm's running statistics, updated once, as nn.BatchNorm2d would (nothing reads
        # them during a training forward, so the update can wait for the block's end).
        if pending:
            update_running_stats_many(pending, _block_count(stats, norm2_stats))
        ctx.save_for_backward(buf, *saved)
        ctx.layers, ctx.stats, ctx.norm2_stats, ctx.masks, ctx.c0, ctx.k = layers, stats, norm2_stats, masks, c0, k
        ctx.group, ctx.ops = group, ops
        return buf

    @staticmethod
    def backward(ctx, grad_buf: torch.Tensor):
        buf, *z1s = ctx.saved_tensors
        layers, c0, k = ctx.layers, ctx.c0, ctx.k
        # Own a copy in the buffer's memory format: earlier layers' input gradients are accumulated
        # into it in place (whatever format the incoming gradient has).
        g = torch.empty_like(buf).copy_(grad_buf)
        deferred = DeferredInputTerms(ctx.stats) if ctx.stats is not None and ctx.ops.defers_input_terms else None
        param_grads: list[torch.Tensor | None] = []
        for i in reversed(range(len(layers))):
            c_in = c0 + i * k
            if deferred is not None and i + 1 < len(layers):  # every reader of these channels is done
                deferred.apply(g, buf, c_in, c_in + k)
            g_out = g[:, c_in : c_in + k]
            if ctx.masks[i] is not None:
                g_out = g_out * ctx.masks[i]
            param_grads[:0] = _layer_backward(ctx, i, g_out, buf[:, :c_in], z1s[i], g[:, :c_in], deferred)
        if deferred is not None and ctx.needs_input_grad[0]:
            deferred.apply(g, buf, 0, c0)
        grad_x = g[:, :c0] if ctx.needs_input_grad[0] else None
        return (grad_x, None, None, None, *param_grads)


def _params(layers: Sequence[DenseLayerLike]) -> list[torch.Tensor]:
    """Per layer and stage: norm.weight, norm.bias, conv.weight (and conv.bias when the conv has one)."""
    out = []
    for layer in layers:
        for norm, conv in stages(layer):
            out += [norm.weight, norm.bias, conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return out


def _is_batchnorm(m: nn.Module) -> bool:
    return type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm, DenseSyncBatchNorm)


def supports_efficient(layers: Sequence[DenseLayerLike]) -> bool:
    """The efficient Function handles the standard layers: affine ``BatchNorm2d`` or ``SyncBatchNorm`` (one type per
    layer), in training or eval mode, and zero-padded convs with or without bias."""
    def fits(layer) -> bool:
        pairs = stages(layer)
        return all(_is_batchnorm(bn) and type(bn) is type(layer.norm1) and bn.affine and conv.padding_mode == "zeros"
                   for bn, conv in pairs)

    return all(fits(l) for l in layers)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401  (ships with torch's CUDA wheels)
    except ImportError:
        return False
    return True


def choose_ops(x: torch.Tensor, fused: bool | None):
    """``TritonOps`` when ``fused`` is True, else ``TorchOps``. ``None`` means the default, which
    is PyTorch operators: on an H100 the fused kernels measured no faster than them yet (the block
    is bound by kernel-launch overhead there; docs/benchmarks.md), so they are opt-in."""
    if not fused:
        return TorchOps
    if not _triton_available():
        raise RuntimeError("fused=True needs Triton (pip install triton); use fused=None or False")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "fused=True runs Triton kernels, which need a CUDA tensor (or TRITON_INTERPRET=1 set before "
            "segdense is imported, to run them slowly on CPU for testing); use fused=None or False")
    return TritonOps


def efficient_dense_block(x: torch.Tensor, layers: Sequence[DenseLayerLike], fused: bool | None = None) -> torch.Tensor:
    """Training forward of a dense block with linear memory; returns the block's concatenated
    output (input channels followed by every layer's new channels). ``SyncBatchNorm`` layers
    under a process group of several ranks share statistics across ranks. ``fused``: Triton
    kernels for the BN-ReLU traffic (see :func:`choose_ops`)."""
    layers = list(layers)
    group = sync_group([m for l in layers for m in (l.norm1, l.norm2)])
    return _EfficientDenseBlock.apply(x, layers, group, choose_ops(x, fused), *_params(layers))


def sync_dense_layer_norms(model: nn.Module, process_group=None) -> nn.Module:
    """Turn the BatchNorms inside dense layers (norm1, norm2) into ``DenseSyncBatchNorm``, in
    place, and leave every other BatchNorm alone. For multi-process training on CPU (gloo), where
    PyTorch's ``SyncBatchNorm`` cannot run (and DDP refuses it): memory-efficient dense blocks sync
    their statistics themselves, so their layers, the bulk of a DenseNet's BatchNorms, train on the
    global batch."""
    for module in model.modules():
        if isinstance(getattr(module, "conv1", None), nn.Conv2d) and hasattr(module, "drop_rate"):
            for name in ("norm1", "norm2"):
                norm = getattr(module, name)
                if type(norm) is nn.BatchNorm2d:
                    setattr(module, name, DenseSyncBatchNorm.from_batchnorm(norm, process_group))
    return model
