"""Memory-efficient training of an RDNet stage: one output buffer, each layer recomputed in backward.

A stage's plain autograd graph keeps, for every layer, a fresh concatenation of all earlier feature maps and every
inner activation of its feature mixer (the depthwise conv's and LayerNorm's outputs at the input's width, the 1x1
expansion before and after GELU at four times that), so training memory grows quadratically with the number of
layers. Here the whole stage is one autograd Function that

* writes the stage input and every layer's new channels into one pre-allocated buffer, so a layer's input is a view
  (no concatenation copy) and the buffer is also the stage's output;
* keeps only that buffer and the drop-path masks for backward;
* recomputes one layer at a time in backward, from its slice of the buffer, and back-propagates through it, adding
  its input gradient into the stage's gradient buffer.

This is not the DenseNet block's Function (``efficient_block``): that one shares BatchNorm batch statistics across
the layers that read the same channels and recomputes only BN-ReLU, which is what a pre-activation BatchNorm layer
allows. An RDNet layer starts with a depthwise convolution and normalises per pixel (LayerNorm), so there is nothing
to share, and its expensive part to keep is the 4x expansion; recomputing the whole layer is the simple, exact
choice. The buffer itself is the one both use (``dense_concat.block_buffer``). The random draws (drop path) are
made in forward, in the plain graph's order, and reused, so gradients equal the plain graph's up to floating-point
rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .dense_concat import block_buffer

__all__ = ["autocast_state", "efficient_stage"]


def autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device_type`` and its dtype: recorded in a recomputing Function's forward and
    restored in its backward, so the recomputed layers run in the same precision."""
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _EfficientStage(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, layers: Sequence[nn.Module], *params: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        buf = block_buffer(x, c + sum(layer.growth_rate for layer in layers))
        masks = []
        for layer in layers:
            inp = buf[:, :c]
            mask = layer.draw_mask(inp)
            out = layer.new_features(inp, mask)
            buf[:, c:c + layer.growth_rate].copy_(out)
            masks.append(mask)
            c += layer.growth_rate
        ctx.save_for_backward(buf)
        ctx.layers, ctx.masks, ctx.c0 = layers, masks, x.shape[1]
        ctx.autocast = autocast_state(x.device.type)
        return buf

    @staticmethod
    def backward(ctx, grad_buf: torch.Tensor):
        (buf,) = ctx.saved_tensors
        layers = ctx.layers
        g = grad_buf.clone(memory_format=torch.preserve_format)
        starts = [ctx.c0]
        for layer in layers[:-1]:
            starts.append(starts[-1] + layer.growth_rate)
        grads: list = []
        enabled, dtype = ctx.autocast
        for i in reversed(range(len(layers))):
            layer, c = layers[i], starts[i]
            need_input = i > 0 or ctx.needs_input_grad[0]
            inp = buf[:, :c].detach().requires_grad_(need_input)
            params = list(layer.parameters())
            trainable = [p for p in params if p.requires_grad]
            with torch.enable_grad(), torch.autocast(buf.device.type, dtype=dtype, enabled=enabled):
                out = layer.new_features(inp, ctx.masks[i])
            wrt = ([inp] if need_input else []) + trainable
            got = list(torch.autograd.grad(out, wrt, g[:, c:c + layer.growth_rate])) if wrt else []
            if need_input:
                g[:, :c].add_(got.pop(0))
            by_param = dict(zip(map(id, trainable), got))
            grads[:0] = [by_param.get(id(p)) for p in params]
            del out, inp
        grad_x = g[:, :ctx.c0] if ctx.needs_input_grad[0] else None
        return (grad_x, None, *grads)


def efficient_stage(x: torch.Tensor, layers: Sequence[nn.Module]) -> torch.Tensor:
    """An RDNet stage's training forward with linear memory; returns the stage input followed by every layer's new
    channels, as the plain stage does. ``layers``: ``rdnet.DenseLayer`` modules (``new_features``, ``draw_mask``,
    ``growth_rate``)."""
    layers = list(layers)
    params = [p for layer in layers for p in layer.parameters()]
    return _EfficientStage.apply(x, layers, *params)
