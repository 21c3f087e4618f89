"""Optimizers and iteration-based learning-rate schedules (poly with warmup, cosine)."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from segdense.registry import unknown_name_message

OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
SCHEDULERS = ("poly", "cosine", "constant")


def build_optimizer(name: str, params: Iterable, lr: float, **kwargs) -> torch.optim.Optimizer:
    """``name`` in sgd/adamw/adam; ``kwargs`` are the torch optimizer's (momentum, weight_decay,
    betas, nesterov ...). ``params`` may be parameter groups with their own lr/weight_decay."""
    if name not in OPTIMIZERS:
        raise ValueError(unknown_name_message("optimizer", name, sorted(OPTIMIZERS)))
    return OPTIMIZERS[name](params, lr=lr, **kwargs)


def lr_factor(name: str, iteration: int, total: int, power: float = 0.9, warmup_iters: int = 0,
              warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base learning rate at ``iteration`` (0-based) of ``total``.

    poly: (1 - t/T)^power decaying to ``min_lr_ratio``; cosine: half a cosine to ``min_lr_ratio``;
    both after a linear warmup from ``warmup_ratio`` over ``warmup_iters`` iterations (mmseg style).
    """
    t = min(iteration, total)
    if name == "poly":
        factor = (1 - t / total) ** power * (1 - min_lr_ratio) + min_lr_ratio
    elif name == "cosine":
        factor = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t / total))
    elif name == "constant":
        factor = 1.0
    else:
        raise ValueError(unknown_name_message("scheduler", name, list(SCHEDULERS)))
    if warmup_iters > 0 and iteration < warmup_iters:
        factor *= warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    return factor


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_iterations: int, **kwargs) -> LambdaLR:
    """A per-iteration ``LambdaLR`` (its state_dict resumes exactly); kwargs as :func:`lr_factor`."""
    if name not in SCHEDULERS:
        raise ValueError(unknown_name_message("scheduler", name, list(SCHEDULERS)))
    if total_iterations < 1:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    return LambdaLR(optimizer, lambda it: lr_factor(name, it, total_iterations, **kwargs))
