"""Memory-efficient dense block (after Pleiss et al. 2017, "Memory-Efficient Implementation of
DenseNets").

A dense block's plain autograd graph keeps, for every layer, a fresh concatenation of all earlier
feature maps and its BN-ReLU output, so training memory grows quadratically with depth. Here the
whole block is one autograd Function that

* writes the block input and every layer's new channels into one pre-allocated buffer, so a layer's
  input is a view (no concatenation copy) and the buffer is also the block's output;
* keeps only that buffer, each layer's 1x1-conv output (bn_size * k channels) and the BN batch
  statistics for backward: BN-ReLU outputs are recomputed from the shared storage, one layer at a
  time, and the convolutions are never recomputed (that is where the time goes);
* updates every BN's running statistics exactly once, in forward, as ``nn.BatchNorm2d`` does.

Gradients equal the plain graph's up to floating-point rounding (same operations, in another order).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn

if TYPE_CHECKING:  # pragma: no cover
    from .densenet import _DenseLayer

_conv_backward = torch.ops.aten.convolution_backward
_bn_backward = torch.ops.aten.native_batch_norm_backward


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout as an explicit mask (scaled keep mask), so plain and efficient paths draw the same
    random numbers in the same order and stay comparable."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def _bn_train(x: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BN as ``nn.BatchNorm2d.forward`` does it (running stats and
    ``num_batches_tracked`` updated once); returns (output, batch mean, batch invstd)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    running_mean, running_var = None, None
    if bn.track_running_stats and bn.running_mean is not None:
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        running_mean, running_var = bn.running_mean, bn.running_var
    return torch.native_batch_norm(
        x, bn.weight, bn.bias, running_mean, running_var, True, momentum, bn.eps
    )


def _bn_relu_recompute(
    x: torch.Tensor, bn: nn.BatchNorm2d, mean: torch.Tensor, invstd: torch.Tensor
) -> torch.Tensor:
    """BN (with the saved batch statistics) + ReLU, for backward: no running-stat update."""
    scale = invstd if bn.weight is None else invstd * bn.weight
    shift = -mean * scale if bn.bias is None else bn.bias - mean * scale
    shape = (1, -1, 1, 1)
    return (x * scale.to(x.dtype).view(shape)).add_(shift.to(x.dtype).view(shape)).relu_()


def _layer_input(buf: torch.Tensor, channels: int) -> torch.Tensor:
    """The first ``channels`` channels of the shared buffer. NCHW: a view (every channel plane is
    contiguous, so BN reads it in place). Channels-last: a view would interleave the channels
    with gaps and push BN onto its slow generic kernel, so a compact channels-last copy is made
    (transient, like the plain path's concatenation, and never kept for backward)."""
    view = buf[:, :channels]
    if buf.is_contiguous(memory_format=torch.channels_last) and not buf.is_contiguous():
        return view.contiguous(memory_format=torch.channels_last)
    return view


def _weight(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
    # Under autocast the activations may be bf16/fp16 while parameters stay fp32.
    return conv.weight.to(like.dtype)


class _EfficientDenseBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layers: Sequence["_DenseLayer"], *params: torch.Tensor):
        n, c0, h, w = x.shape
        k = layers[0].conv2.out_channels
        fmt = (
            torch.channels_last
            if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            else torch.contiguous_format
        )
        buf = torch.empty(
            (n, c0 + len(layers) * k, h, w), dtype=x.dtype, device=x.device, memory_format=fmt
        )
        buf[:, :c0].copy_(x)
        saved, stats, masks = [], [], []
        for i, layer in enumerate(layers):
            c_in = c0 + i * k
            a1, m1, s1 = _bn_train(_layer_input(buf, c_in), layer.norm1)
            z1 = layer.conv1._conv_forward(a1.relu_(), _weight(layer.conv1, a1), None)
            del a1
            a2, m2, s2 = _bn_train(z1, layer.norm2)
            out = layer.conv2._conv_forward(a2.relu_(), _weight(layer.conv2, a2), None)
            del a2
            mask = None
            if layer.drop_rate > 0:
                mask = dropout_mask(out, layer.drop_rate)
                out = out.mul_(mask)
            buf[:, c_in : c_in + k].copy_(out)
            saved.append(z1)
            stats.append((m1, s1, m2, s2))
            masks.append(mask)
        ctx.save_for_backward(buf, *saved)
        ctx.layers, ctx.stats, ctx.masks, ctx.c0, ctx.k = layers, stats, masks, c0, k
        return buf

    @staticmethod
    def backward(ctx, grad_buf: torch.Tensor):
        buf, *z1s = ctx.saved_tensors
        layers, c0, k = ctx.layers, ctx.c0, ctx.k
        # Own a copy: earlier layers' input gradients are accumulated into it in place.
        g = grad_buf.clone(memory_format=torch.preserve_format)
        param_grads: list[torch.Tensor | None] = []
        for i in reversed(range(len(layers))):
            layer, z1 = layers[i], z1s[i]
            m1, s1, m2, s2 = ctx.stats[i]
            c_in = c0 + i * k
            g_out = g[:, c_in : c_in + k]
            if ctx.masks[i] is not None:
                g_out = g_out * ctx.masks[i]
            conv1, conv2 = layer.conv1, layer.conv2
            # Layer's second half: BN2-ReLU recomputed from the saved 1x1-conv output.
            a2 = _bn_relu_recompute(z1, layer.norm2, m2, s2)
            ga2, gw2, _ = _conv_backward(
                g_out, a2, _weight(conv2, a2), None, list(conv2.stride), list(conv2.padding),
                list(conv2.dilation), False, [0, 0], conv2.groups, [True, True, False],
            )
            ga2 = torch.ops.aten.threshold_backward(ga2, a2, 0)
            del a2
            gz1, gn2w, gn2b = _bn_backward(
                ga2, z1, layer.norm2.weight, None, None, m2, s2, True, layer.norm2.eps, [True, True, True]
            )
            del ga2
            # First half: BN1-ReLU recomputed from the shared buffer (a view, no concatenation).
            inp = _layer_input(buf, c_in)
            a1 = _bn_relu_recompute(inp, layer.norm1, m1, s1)
            ga1, gw1, _ = _conv_backward(
                gz1, a1, _weight(conv1, a1), None, list(conv1.stride), list(conv1.padding),
                list(conv1.dilation), False, [0, 0], conv1.groups, [True, True, False],
            )
            ga1 = torch.ops.aten.threshold_backward(ga1, a1, 0)
            del a1, gz1
            gin, gn1w, gn1b = _bn_backward(
                ga1, inp, layer.norm1.weight, None, None, m1, s1, True, layer.norm1.eps, [True, True, True]
            )
            del ga1
            g[:, :c_in].add_(gin)
            del gin
            # Same order as _params(): norm1.w, norm1.b, conv1.w, norm2.w, norm2.b, conv2.w.
            param_grads[:0] = [
                gn1w, gn1b, gw1.to(conv1.weight.dtype), gn2w, gn2b, gw2.to(conv2.weight.dtype)
            ]
        grad_x = g[:, :c0] if ctx.needs_input_grad[0] else None
        return (grad_x, None, *param_grads)


def _params(layers: Sequence["_DenseLayer"]) -> list[torch.Tensor]:
    out = []
    for layer in layers:
        out += [layer.norm1.weight, layer.norm1.bias, layer.conv1.weight,
                layer.norm2.weight, layer.norm2.bias, layer.conv2.weight]
    return out


def supports_efficient(layers: Sequence["_DenseLayer"]) -> bool:
    """The efficient Function handles the standard layer: plain affine ``BatchNorm2d`` (not, e.g.,
    ``SyncBatchNorm``, whose statistics span processes) and bias-free zero-padded convs."""
    return all(
        type(l.norm1) is nn.BatchNorm2d and type(l.norm2) is nn.BatchNorm2d
        and l.norm1.affine and l.norm2.affine and l.conv1.bias is None and l.conv2.bias is None
        and l.conv2.padding_mode == "zeros"
        for l in layers
    )


def efficient_dense_block(x: torch.Tensor, layers: Sequence["_DenseLayer"]) -> torch.Tensor:
    """Training forward of a dense block with linear memory; returns the block's concatenated
    output (input channels followed by every layer's new channels)."""
    return _EfficientDenseBlock.apply(x, list(layers), *_params(layers))
