"""Optimizer parameter groups: backbone vs. head learning rates, no weight decay on norms/biases."""
from __future__ import annotations

import torch.nn as nn

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _no_decay_names(module: nn.Module) -> set[str]:
    """Names of biases and of every parameter of a normalisation layer."""
    names = set()
    for mod_name, mod in module.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            if isinstance(mod, _NORMS) or p_name == "bias":
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
    no_decay_norm_bias: bool = True,
) -> list[dict]:
    """Parameter groups for ``torch.optim`` optimizers.

    ``model.backbone`` gets ``lr``; everything else (head, aux head) gets ``lr * head_lr_mult``.
    With ``no_decay_norm_bias`` the parameters of normalisation layers and all biases get
    ``weight_decay=0``. Frozen parameters (``requires_grad=False``) are left out; empty groups
    are dropped. Each group carries a ``name`` ("backbone", "backbone_no_decay", "head",
    "head_no_decay"), which torch optimizers keep and ignore.
    """
    if not hasattr(model, "backbone"):
        raise TypeError(f"param_groups needs a model with a .backbone, got {type(model).__name__}")
    no_decay = _no_decay_names(model) if no_decay_norm_bias else set()
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    buckets: dict[str, list] = {"backbone": [], "backbone_no_decay": [], "head": [], "head_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if id(p) in backbone_ids else "head"
        buckets[part + ("_no_decay" if name in no_decay else "")].append(p)
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        group_lr = lr * (head_lr_mult if name.startswith("head") else 1.0)
        wd = 0.0 if name.endswith("no_decay") else weight_decay
        groups.append({"name": name, "params": params, "lr": group_lr, "weight_decay": wd})
    return groups
