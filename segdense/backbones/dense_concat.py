"""How a dense block forms the growing concatenation its layers read, and which form runs when.

Every dense family (DenseNet, FC-DenseNet, RDNet) has a block in which layer j reads the block input and the
channels of layers 0..j-1. That concatenation takes one of three forms, the same values in each:

* ``"plain"``: the list of outputs so far, concatenated for each layer (torchvision's graph);
* ``"export"``: while tracing or scripting (ONNX, TorchScript), each layer's input is the previous input plus the
  previous layer's channels, one two-way Concat per layer (:func:`chained_concat`); ONNX Runtime runs that graph
  faster than a concatenation of the whole list per layer;
* ``"buffer"``: one pre-allocated output buffer (:func:`block_buffer`); each layer reads a view of the channels
  before it and writes its own after them. Only the memory-efficient autograd Functions use it
  (``efficient_block``, ``rdnet_efficient``), where it replaces the concatenations autograd would keep.

:func:`dense_path` is the rule both families follow (docs/architecture.md says why a forward without gradients
runs the plain form).
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch


def dense_path(memory_efficient: bool, training: bool) -> Literal["plain", "export", "buffer"]:
    """The form a dense block's forward takes now: ``"export"`` while tracing or scripting; ``"buffer"`` in
    memory-efficient training (``memory_efficient``, the block in training mode, autograd recording); ``"plain"``
    otherwise, every forward without gradients included."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return "export"
    if memory_efficient and training and torch.is_grad_enabled():
        return "buffer"
    return "plain"


def chained_concat(x: torch.Tensor, new_features: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """The exported form: ``x`` followed by each layer's new channels, each layer reading all channels so far."""
    for layer in new_features:
        x = torch.cat([x, layer(x)], 1)
    return x


def block_buffer(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A dense block's output buffer: ``channels`` channels in ``x``'s memory format (channels-last stays
    channels-last, so every layer's slice keeps that layout), holding ``x`` in its first channels. Each layer reads
    a view of it and writes its new channels after those (DenseNet's and RDNet's memory-efficient blocks)."""
    n, c, h, w = x.shape
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format
    buf = torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    buf[:, :c].copy_(x)
    return buf
