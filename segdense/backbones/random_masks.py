"""The random masks of the dense layers, drawn as explicit tensors: dropout (DenseNets, FC-DenseNets) and drop path
(RDNet). A plain and a memory-efficient path that draw them through these functions draw the same random numbers
in the same order, so their results stay comparable; the memory-efficient ones keep the mask for backward."""
from __future__ import annotations

import torch


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout as an explicit mask: elementwise keep mask of ``like``'s shape, scaled by 1 / (1 - p)."""
    return torch.empty_like(like).bernoulli_(1.0 - p).div_(1.0 - p)


def drop_path_mask(like: torch.Tensor, rate: float) -> torch.Tensor:
    """A per-sample keep mask of ones and zeros, shape (N, 1, 1, 1): timm's ``drop_path`` draws
    (``new_empty(...).bernoulli_(keep)``, one per layer in layer order). The caller scales it by 1/keep in its
    output's dtype, as timm does (under autocast float32, where the input may be bfloat16)."""
    return like.new_empty((like.shape[0], 1, 1, 1)).bernoulli_(1.0 - rate)
