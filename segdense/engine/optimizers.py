"""Optimizers and iteration-based learning-rate schedules (poly, cosine, exponential, constant; linear warmup), by
name."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from segdense.models.param_groups import layer_decay_groups, param_groups
from segdense.registry import Registry

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register(torch.optim.SGD, "sgd")
OPTIMIZERS.register(torch.optim.AdamW, "adamw")
OPTIMIZERS.register(torch.optim.Adam, "adam")
OPTIMIZERS.register(torch.optim.RMSprop, "rmsprop")  # conf/optimizer/rmsprop.yaml: Lasagne's rho 0.9, eps 1e-6

# A schedule is the factor of the base learning rate at iteration t of total (before warmup).
SCHEDULERS = Registry("scheduler")


@SCHEDULERS.register
def poly(t: int, total: int, power: float = 0.9, min_lr_ratio: float = 0.0) -> float:
    """(1 - t/T)^power, decaying to ``min_lr_ratio`` (mmseg's poly)."""
    return (1 - t / total) ** power * (1 - min_lr_ratio) + min_lr_ratio


@SCHEDULERS.register
def cosine(t: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """Half a cosine down to ``min_lr_ratio``."""
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t / total))


@SCHEDULERS.register
def exponential(t: int, total: int, gamma: float = 0.995, every: int = 1) -> float:
    """``gamma ** (t // every)``: a step decay by ``gamma`` every ``every`` iterations (``every`` = the iterations
    of one epoch gives a per-epoch decay, FC-DenseNet's x0.995)."""
    if not 0 < gamma <= 1 or every < 1:
        raise ValueError(f"exponential schedule needs 0 < gamma <= 1 and every >= 1, got gamma={gamma}, every={every}")
    return gamma ** (t // every)


@SCHEDULERS.register
def constant(t: int, total: int) -> float:
    return 1.0


def build_optimizer(name: str, model: nn.Module, lr: float, head_lr_mult: float = 1.0,
                    no_decay_norm_bias: bool = False, layer_decay: float | None = None,
                    layer_decay_num_stages: int | None = None, **kwargs) -> torch.optim.Optimizer:
    """The optimizer registered as ``name`` (sgd, adamw, adam, rmsprop) over ``model``'s parameter groups; ``kwargs``
    are the torch optimizer's own (momentum, weight_decay, betas, nesterov, alpha, eps ...).

    Without ``layer_decay`` the groups are :func:`~segdense.models.param_groups.param_groups`'s: the head at
    ``lr * head_lr_mult``, optionally no weight decay on norms and biases. With ``layer_decay`` (e.g. 0.9) they are
    :func:`~segdense.models.param_groups.layer_decay_groups`'s: stage-wise learning-rate decay over the backbone's
    stages (``layer_decay_num_stages`` of them, default the backbone's own count), the RDNet authors' rule.
    """
    optimizer = OPTIMIZERS.get(name)
    weight_decay = kwargs.get("weight_decay", 0.0)
    if layer_decay is not None:
        groups = layer_decay_groups(model, lr, layer_decay, weight_decay=weight_decay,
                                    num_stages=layer_decay_num_stages, head_lr_mult=head_lr_mult,
                                    no_decay_norm_bias=no_decay_norm_bias)
    elif layer_decay_num_stages is not None:
        raise ValueError("optimizer.layer_decay_num_stages is set but optimizer.layer_decay is null; set both "
                         "(e.g. layer_decay=0.9) or neither")
    else:
        groups = param_groups(model, lr, head_lr_mult=head_lr_mult, weight_decay=weight_decay,
                              no_decay_norm_bias=no_decay_norm_bias)
    return optimizer(groups, lr=lr, **kwargs)


def lr_factor(name: str, iteration: int, total: int, warmup_iters: int = 0, warmup_ratio: float = 0.1,
              **kwargs) -> float:
    """The multiplier of the base learning rate at ``iteration`` (0-based) of ``total``: the schedule registered
    as ``name`` (with its ``kwargs``), after a linear warmup from ``warmup_ratio`` over ``warmup_iters``
    iterations (mmseg style)."""
    factor = SCHEDULERS.get(name)(min(iteration, total), total, **kwargs)
    if warmup_iters > 0 and iteration < warmup_iters:
        factor *= warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    return factor


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_iterations: int, warmup_iters: int = 0,
                    warmup_ratio: float = 0.1, **kwargs) -> LambdaLR:
    """A per-iteration ``LambdaLR`` (its state_dict resumes exactly) following :func:`lr_factor`."""
    SCHEDULERS.get(name)
    if total_iterations < 1:
        raise ValueError(f"total_iterations must be positive, got {total_iterations}")
    return LambdaLR(optimizer, lambda it: lr_factor(name, it, total_iterations, warmup_iters, warmup_ratio,
                                                    **kwargs))
