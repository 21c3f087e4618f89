"""Memory-efficient training of a HarDBlock: each layer recomputed in backward from the layers it reads.

A HarDBlock's plain autograd graph keeps, for every layer, the concatenation of its links (a fresh copy of up to
log2(k) + 1 earlier feature maps), the conv output BatchNorm normalises and the BatchNorm output ReLU6 clips (a
depthwise net's layer keeps its 1x1 conv's, BatchNorm's, ReLU6's and depthwise conv's activations as well). Here
the whole block is one autograd Function that

* runs the block without recording, so only the block input and every layer's output are kept (those in the
  block's output as slices of it, which the next module keeps anyway): the concatenations and each layer's inner
  activations are not;
* recomputes one layer at a time in backward, last first: the concatenation of its links from the kept outputs,
  then the layer, and back-propagates through it, adding its links' gradients to theirs;
* updates every BatchNorm's running statistics exactly once, in forward: while a layer is recomputed its BatchNorms
  in training mode normalise with the batch's statistics without tracking them (:func:`batch_stats_untracked`).

A layer begins with a convolution, not a BatchNorm, so there are no batch statistics to share between the layers
that read a channel (the reason the DenseNet block's Function keeps its convolutions' outputs and recomputes only
BN-ReLU), and a layer's links are not the channels before it, so one shared buffer (``dense_concat.block_buffer``)
cannot hold every layer's input as a view: recomputing the whole layer from the kept outputs is the lean, exact
choice, as in RDNet's stages (``rdnet_efficient``, whose autocast handling this shares). A layer is recomputed
with the same operations on the same values, so in float64 gradients equal the plain graph's up to the order in
which a feature map's gradients are summed.

The modules between the blocks (the stem convs and pool, each block's 1x1 conv and its downsampling) are
recomputed the same way, one module per Function (:func:`recomputed`): each keeps only its input, which the module
before it returned and keeps anyway, not its convolution's, BatchNorm's and activation's outputs or a max pool's
indices.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from .rdnet_efficient import autocast_state

__all__ = ["batch_stats_untracked", "efficient_hardblock", "recomputed"]


@contextlib.contextmanager
def batch_stats_untracked(module: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm of ``module`` in training mode normalises with the batch's statistics but
    leaves its running statistics and batch count alone (``track_running_stats`` off, as ``nn.BatchNorm2d`` reads
    it); BatchNorms in eval mode keep using their running statistics."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.training and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def _concat(inputs: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]


class _EfficientHarDBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, block: nn.Module, *params: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer, link in zip(block.layers, block.links):
            features.append(layer(_concat([features[j] for j in link])))
        out = torch.cat([features[k] for k in block.outputs], 1)
        # The layers in the output are kept as slices of it (the next module keeps it anyway), the others apart.
        ctx.save_for_backward(out, *[f for k, f in enumerate(features) if k == 0 or k not in block.outputs])
        ctx.block = block
        ctx.autocast = autocast_state(x.device.type)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        block = ctx.block
        out, *apart = ctx.saved_tensors
        features: list = [None] * len(block.widths)
        grads: list = [None] * len(block.widths)
        start = 0
        for k in block.outputs:  # the input (``keep_base``) is kept apart: the first layer reads it alone
            features[k] = out[:, start:start + block.widths[k]]
            grads[k] = grad_out[:, start:start + block.widths[k]]
            start += block.widths[k]
        for k, f in zip([k for k in range(len(features)) if k == 0 or k not in block.outputs], apart):
            features[k] = f
        by_param: dict = {}
        for k in reversed(range(1, len(features))):
            got = _layer_backward(ctx, features, block.layers[k - 1], block.links[k - 1], grads[k])
            for j, g in zip(block.links[k - 1], got["inputs"]):
                if g is not None:
                    grads[j] = g if grads[j] is None else grads[j] + g
            by_param.update(got["params"])
        grad_x = grads[0] if ctx.needs_input_grad[0] else None
        return (grad_x, None, *[by_param.get(id(p)) for p in block.parameters()])


def _layer_backward(ctx, features, layer: nn.Module, link: list[int], grad: torch.Tensor | None) -> dict:
    """Recompute ``layer`` on its links and back-propagate ``grad``: the links' gradients (``None`` where none is
    needed) and the trainable parameters' gradients by ``id``."""
    if grad is None:
        return {"inputs": [None] * len(link), "params": {}}
    inputs = [features[j].detach().requires_grad_(j > 0 or ctx.needs_input_grad[0]) for j in link]
    wanted = [t for t in inputs if t.requires_grad]
    trainable = [p for p in layer.parameters() if p.requires_grad]
    if not wanted and not trainable:
        return {"inputs": [None] * len(link), "params": {}}
    enabled, dtype = ctx.autocast
    with torch.enable_grad(), torch.autocast(grad.device.type, dtype=dtype, enabled=enabled), \
            batch_stats_untracked(layer):
        out = layer(_concat(inputs))
    got = list(torch.autograd.grad(out, wanted + trainable, grad))
    input_grads = [got.pop(0) if t.requires_grad else None for t in inputs]
    return {"inputs": input_grads, "params": dict(zip(map(id, trainable), got))}


def efficient_hardblock(x: torch.Tensor, block: nn.Module) -> torch.Tensor:
    """A HarDBlock's training forward keeping only its input and its layers' outputs for backward; returns what the
    plain block returns. ``block``: a ``hardnet_block.HarDBlock`` (``layers``, ``links``, ``outputs``)."""
    return _EfficientHarDBlock.apply(x, block, *block.parameters())


class _Recomputed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module, *params: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        ctx.autocast = autocast_state(x.device.type)
        return module(x)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, = ctx.saved_tensors
        got = _layer_backward(ctx, [x], ctx.module, [0], grad_out)
        grad_x = got["inputs"][0] if ctx.needs_input_grad[0] else None
        return (grad_x, None, *[got["params"].get(id(p)) for p in ctx.module.parameters()])


def recomputed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` in training, keeping only ``x`` for backward and recomputing ``module`` there (its BatchNorms'
    running statistics updated once, in forward)."""
    return _Recomputed.apply(x, module, *module.parameters())
