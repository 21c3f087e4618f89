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

_conv_backward = torch.ops.aten.convolution_backward
_bn_backward = torch.ops.aten.native_batch_norm_backward


class DenseLayerLike(Protocol):
    """What the efficient block needs of a dense layer (``densenet._DenseLayer`` is one)."""

    norm1: nn.BatchNorm2d
    conv1: nn.Conv2d
    norm2: nn.BatchNorm2d
    conv2: nn.Conv2d
    drop_rate: float


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout as an explicit mask (scaled keep mask), so plain and efficient paths draw the same
    random numbers in the same order and stay comparable."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def bn_relu(
    x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, invstd: torch.Tensor,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    """ReLU(BN(x)) with given batch statistics (float32/64). ``x`` may be a channel slice of the
    block buffer; the output is a fresh compact tensor in ``x``'s memory format. Full-precision
    inputs take a per-channel scale and shift on the slice itself (on CPU 2-3x faster than copying
    the slice for BatchNorm): one ``addcmul`` on channels-last data, where channels are innermost,
    but a multiply and an in-place add on NCHW planes, where ``addcmul``'s broadcast kernel is 2.4x
    slower (2 x 800 x 32 x 32: 0.43 ms against 0.18). bf16/fp16 inputs go through BatchNorm's own
    kernel, which computes in float32 (a low-precision scale and shift would lose digits to
    cancellation)."""
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
    return torch.batch_norm(_compact(x), bn.weight, bn.bias, mean, var, False, 0.0, bn.eps, True).relu_()


def _compact(view: torch.Tensor) -> torch.Tensor:
    """A compact copy of a channel slice of the block buffer, in the buffer's memory format.
    BatchNorm's CPU backward takes a generic kernel on a strided view, 6-8x slower than a copy
    plus its contiguous kernel (NCHW, 2 x 800 x 32 x 32 slice of 1024 channels: 1.46 ms against
    0.07 + 0.18 ms); converting an NCHW slice to channels-last instead (as this did before) cost
    2 ms for the copy, 2.5 ms for the mixed-layout backward and a strided accumulation."""
    if view.is_contiguous(memory_format=torch.channels_last) or view.is_contiguous():
        return view
    if view.stride(1) == 1:  # channels innermost: a channels-last buffer
        return view.contiguous(memory_format=torch.channels_last)
    return view.contiguous()  # NCHW planes, strided only across the batch


def _weight(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
    # Under autocast the activations may be bf16/fp16 while parameters stay fp32.
    return conv.weight.to(like.dtype)


def _bn_train(x: torch.Tensor, bn: nn.BatchNorm2d, group, ops, pending: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BN2 in training mode; returns (ReLU output, batch mean, batch invstd). Local statistics with
    PyTorch ops take its fused kernel, which also updates the running statistics; otherwise the
    statistics are computed (and all-reduced) first and (bn, mean, var) is appended to ``pending``
    for one batched running-statistics update."""
    if group is None and ops.name == "torch":
        momentum = 0.0 if bn.momentum is None else bn.momentum
        running_mean = running_var = None
        if bn.track_running_stats and bn.running_mean is not None:
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
                if bn.momentum is None:
                    momentum = 1.0 / float(bn.num_batches_tracked)
            running_mean, running_var = bn.running_mean, bn.running_var
        out, mean, invstd = torch.native_batch_norm(
            x, bn.weight, bn.bias, running_mean, running_var, True, momentum, bn.eps
        )
        return out.relu_(), mean, invstd
    mean, var, count = moments(x, group)
    pending.append((bn, mean, var))
    invstd = (var + bn.eps).rsqrt()
    return ops.bn_relu(x, bn, mean, invstd), mean, invstd


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
    _, gw, gb = _bn_backward(dy, x, bn.weight, None, None, mean, invstd, True, bn.eps, [False, True, True])
    scale, coef_x, const = _input_grad_terms(gw, gb, bn, mean, invstd, count, group)
    shape = (1, -1, 1, 1)
    dx = torch.addcmul((const - mean * coef_x).to(dy.dtype).view(shape), dy, scale.to(dy.dtype).view(shape))
    return dx.addcmul_(x, coef_x.to(dy.dtype).view(shape)), gw, gb


def _bn_backward_any(dy, x, bn, mean, invstd, count, group):
    if group is None:
        return _bn_backward(dy, x, bn.weight, None, None, mean, invstd, True, bn.eps, [True, True, True])
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
        reduces (densenet121 at OS8, batch 2, 256^2, channels-last, 2 CPU threads: 21 ms of BatchNorm
        backward per step instead of 33, the accumulation into ``into`` costing what it did)."""
        # In place: dy is the fresh input gradient of the convolution, read by nothing else.
        dy = torch.ops.aten.threshold_backward.grad_input(dy, a, 0, grad_input=dy)
        if deferred is None:
            gx, gw, gb = _bn_backward_any(dy, _compact(x), bn, mean, invstd, count, group)
            if into is None:
                return gx, gw, gb
            into.add_(gx)
            return None, gw, gb
        _, gw, gb = _bn_backward(dy, _compact(x), bn.weight, None, None, mean, invstd, True, bn.eps,
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


class _EfficientDenseBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layers: Sequence[DenseLayerLike], group, ops, *params: torch.Tensor):
        n, c0, h, w = x.shape
        k = layers[0].conv2.out_channels
        if group is None:
            check_count(n * h * w, c0)
        fmt = (
            torch.channels_last
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        buf = torch.empty(
            (n, c0 + len(layers) * k, h, w), dtype=x.dtype, device=x.device, memory_format=fmt
        )
        buf[:, :c0].copy_(x)
        stats = BlockStats(buf.shape[1], x, group, eps=layers[0].norm1.eps)
        stats.record(x, 0)
        saved, stats2, masks, pending = [], [], [], []
        for i, layer in enumerate(layers):
            c_in = c0 + i * k
            n1 = layer.norm1
            mean1 = stats.mean[:c_in]
            pending.append((n1, mean1, stats.var[:c_in]))
            a1 = ops.bn_relu(buf[:, :c_in], n1, mean1, stats.invstd(c_in, n1.eps), stats.var[:c_in])
            z1 = layer.conv1._conv_forward(a1, _weight(layer.conv1, a1), None)
            del a1
            a2, m2, s2 = _bn_train(z1, layer.norm2, group, ops, pending)
            out = layer.conv2._conv_forward(a2, _weight(layer.conv2, a2), None)
            del a2
            mask = None
            if layer.drop_rate > 0:
                mask = dropout_mask(out, layer.drop_rate)
                out = out.mul_(mask)
            buf[:, c_in : c_in + k].copy_(out)
            if i + 1 < len(layers):  # the last layer's channels are read by no norm1 of this block
                stats.record(out, c_in)
            saved.append(z1)
            stats2.append((m2, s2))
            masks.append(mask)
        # Every BatchNorm's running statistics, updated once, as nn.BatchNorm2d would (nothing reads
        # them during a training forward, so the update can wait for the block's end).
        update_running_stats_many(pending, stats.count)
        ctx.save_for_backward(buf, *saved)
        ctx.layers, ctx.stats, ctx.stats2, ctx.masks, ctx.c0, ctx.k = layers, stats, stats2, masks, c0, k
        ctx.group, ctx.ops = group, ops
        return buf

    @staticmethod
    def backward(ctx, grad_buf: torch.Tensor):
        buf, *z1s = ctx.saved_tensors
        layers, c0, k, stats, group, ops = ctx.layers, ctx.c0, ctx.k, ctx.stats, ctx.group, ctx.ops
        # Own a copy in the buffer's memory format: earlier layers' input gradients are accumulated
        # into it in place (whatever format the incoming gradient has).
        g = torch.empty_like(buf).copy_(grad_buf)
        deferred = DeferredInputTerms(stats) if ops.defers_input_terms else None
        param_grads: list[torch.Tensor | None] = []
        for i in reversed(range(len(layers))):
            layer, z1 = layers[i], z1s[i]
            m2, s2 = ctx.stats2[i]
            c_in = c0 + i * k
            if deferred is not None and i + 1 < len(layers):  # every reader of these channels is done
                deferred.apply(g, buf, c_in, c_in + k)
            g_out = g[:, c_in : c_in + k]
            if ctx.masks[i] is not None:
                g_out = g_out * ctx.masks[i]
            conv1, conv2, n1, n2 = layer.conv1, layer.conv2, layer.norm1, layer.norm2
            # Layer's second half: BN2-ReLU recomputed from the saved 1x1-conv output.
            a2 = ops.bn_relu(z1, n2, m2, s2)
            ga2, gw2, _ = _conv_backward(
                g_out, a2, _weight(conv2, a2), None, list(conv2.stride), list(conv2.padding),
                list(conv2.dilation), False, [0, 0], conv2.groups, [True, True, False],
            )
            gz1, gn2w, gn2b = ops.bn_relu_backward(ga2, z1, a2, n2, m2, s2, stats.count, group)
            del a2, ga2
            # First half: BN1-ReLU recomputed from the shared buffer and the shared statistics.
            m1, s1 = stats.mean[:c_in], stats.invstd(c_in, n1.eps)
            x1 = ops.backward_input(buf[:, :c_in])
            a1 = ops.bn_relu(x1, n1, m1, s1, stats.var[:c_in])
            ga1, gw1, _ = _conv_backward(
                gz1, a1, _weight(conv1, a1), None, list(conv1.stride), list(conv1.padding),
                list(conv1.dilation), False, [0, 0], conv1.groups, [True, True, False],
            )
            del gz1
            # Input gradient added into the block's gradient buffer in place.
            _, gn1w, gn1b = ops.bn_relu_backward(ga1, x1, a1, n1, m1, s1, stats.count, group,
                                                 into=g[:, :c_in], deferred=deferred)
            del a1, ga1, x1
            # Same order as _params(): norm1.w, norm1.b, conv1.w, norm2.w, norm2.b, conv2.w.
            param_grads[:0] = [
                gn1w, gn1b, gw1.to(conv1.weight.dtype), gn2w, gn2b, gw2.to(conv2.weight.dtype)
            ]
        if deferred is not None and ctx.needs_input_grad[0]:
            deferred.apply(g, buf, 0, c0)
        grad_x = g[:, :c0] if ctx.needs_input_grad[0] else None
        return (grad_x, None, None, None, *param_grads)


def _params(layers: Sequence[DenseLayerLike]) -> list[torch.Tensor]:
    out = []
    for layer in layers:
        out += [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight,
                layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
    return out


def _is_batchnorm(m: nn.Module) -> bool:
    return type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm, DenseSyncBatchNorm)


def supports_efficient(layers: Sequence[DenseLayerLike]) -> bool:
    """The efficient Function handles the standard layer: affine ``BatchNorm2d`` or
    ``SyncBatchNorm`` that tracks running statistics, and bias-free zero-padded convs."""
    return all(
        _is_batchnorm(l.norm1) and _is_batchnorm(l.norm2) and type(l.norm1) is type(l.norm2)
        and l.norm1.affine and l.norm2.affine and l.conv1.bias is None and l.conv2.bias is None
        and l.conv2.padding_mode == "zeros"
        for l in layers
    )


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
