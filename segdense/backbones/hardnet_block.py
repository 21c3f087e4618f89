"""The Harmonic Dense Block (HarDNet's ``HarDBlock``): sparse links instead of a dense block's full concatenation.

Layer k (1-based; layer 0 is the block input) reads the concatenation of layers k - 2^i for every 2^i dividing k
(``links``), in that order, and is ``c = growth_rate * grmul^(len(links) - 1)`` channels wide, rounded as the
authors round: ``int(int(c + 1) / 2) * 2``, an even number (17 becomes 18, 28.9 becomes 28). The block returns
the concatenation of the odd-numbered layers and the last one (and the input first with ``keep_base``). Parameters
live in ``layers`` (the authors' name). With ``memory_efficient``, training with gradients recomputes each layer
in backward instead of keeping its links' concatenation (``hardnet_efficient``; ``dense_concat.dense_path`` decides
when, as for the dense blocks).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .dense_concat import dense_path
from .hardnet_efficient import efficient_hardblock

__all__ = ["HarDBlock", "harmonic_links", "layer_width"]


def harmonic_links(k: int) -> list[int]:
    """The layers layer ``k`` (>= 1) reads: k - 2^i for every 2^i (i < 10) dividing k, nearest first."""
    return [k - 2 ** i for i in range(10) if k % 2 ** i == 0]


def layer_width(k: int, growth_rate: int, grmul: float) -> int:
    """Layer ``k``'s channels: ``c = growth_rate * grmul^(links - 1)`` rounded as the authors do,
    ``int(int(c + 1) / 2) * 2``."""
    width = growth_rate * grmul ** (len(harmonic_links(k)) - 1)
    return int(int(width + 1) / 2) * 2


class HarDBlock(nn.Module):
    """``num_layers`` layers linked harmonically; ``make_layer(in_channels, out_channels)`` builds each;
    ``memory_efficient``: see the module docstring."""

    def __init__(self, in_channels: int, growth_rate: int, grmul: float, num_layers: int,
                 make_layer: Callable[[int, int], nn.Module], keep_base: bool = False,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        widths = [in_channels] + [layer_width(k, growth_rate, grmul) for k in range(1, num_layers + 1)]
        self.links = [harmonic_links(k) for k in range(1, num_layers + 1)]
        self.layers = nn.ModuleList(
            make_layer(sum(widths[j] for j in link), widths[k]) for k, link in enumerate(self.links, 1))
        self.keep_base = keep_base
        self.outputs = [k for k in range(num_layers + 1)
                        if (k == 0 and keep_base) or k == num_layers or k % 2 == 1]
        self.widths = widths
        self.out_channels = sum(widths[k] for k in self.outputs)
        self.memory_efficient = memory_efficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if dense_path(self.memory_efficient, self.training) == "buffer":
            return efficient_hardblock(x, self)
        features = [x]
        for layer, link in zip(self.layers, self.links):
            inputs = [features[j] for j in link]
            features.append(layer(torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]))
        return torch.cat([features[k] for k in self.outputs], 1)
