"""Optimizer parameter groups: backbone vs. head learning rates, no weight decay on norms/biases, and stage-wise
learning-rate decay over a backbone's stages."""
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


def _check_stage_interface(backbone: nn.Module) -> None:
    if not (isinstance(getattr(backbone, "num_stages", None), int) and callable(getattr(backbone, "stage_of", None))):
        raise ValueError(
            f"optimizer.layer_decay needs a backbone that reports its stages (an int num_stages and "
            f"stage_of(param_name)), and {type(backbone).__name__} does not; the DenseNets, ResNets and RDNets do. "
            "Use one of those or set optimizer.layer_decay=null")


def layer_decay_groups(
    model: nn.Module,
    lr: float,
    layer_decay: float,
    weight_decay: float = 0.0,
    num_stages: int | None = None,
    head_lr_mult: float = 1.0,
    no_decay_norm_bias: bool = True,
) -> list[dict]:
    """Parameter groups with stage-wise learning-rate decay, the RDNet authors'
    ``RDNetLearningRateDecayOptimizerConstructor`` (decay_type ``stage_wise``) for any backbone that reports its
    stages (``num_stages`` and ``stage_of(param_name) -> 0 for the stem, i + 1 for stage i``).

    With ``L = num_stages + 2`` (``num_stages`` defaults to the backbone's), a parameter's id is the backbone's
    ``stage_of`` for backbone parameters and ``L + 1`` for everything else (heads; also a backbone parameter whose
    ``stage_of`` is None), and its learning rate is ``lr * layer_decay ** (L - id - 1)``: the stem gets
    ``layer_decay ** (num_stages + 1)``, the last stage ``layer_decay ** 1``, and the heads ``layer_decay ** -2``,
    i.e. above ``lr`` (0.9: x1.235). That last value is the authors' quirk, which their published models were
    trained with; it is reproduced as it is. ``head_lr_mult`` multiplies the heads' rate on top. With
    ``no_decay_norm_bias``, 1-D parameters (norms, layer scales) and biases get no weight decay, as in theirs.
    Frozen parameters are left out. Groups are named ``layer_<id>_decay`` / ``layer_<id>_no_decay`` (backbone) and
    ``head_decay`` / ``head_no_decay`` and carry their ``lr_scale``.
    """
    if not hasattr(model, "backbone"):
        raise TypeError(f"layer_decay_groups needs a model with a .backbone, got {type(model).__name__}")
    if not 0 < layer_decay <= 1:
        raise ValueError(f"optimizer.layer_decay must lie in (0, 1] (or be null for none), got {layer_decay}")
    backbone = model.backbone
    _check_stage_interface(backbone)
    num_layers = (backbone.num_stages if num_stages is None else int(num_stages)) + 2
    backbone_names = {id(p): name for name, p in backbone.named_parameters()}
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        stage = backbone.stage_of(backbone_names[id(p)]) if id(p) in backbone_names else None
        layer_id = num_layers + 1 if stage is None else int(stage)
        no_decay = no_decay_norm_bias and (p.ndim == 1 or name.endswith(".bias"))
        part = "head" if id(p) not in backbone_names else f"layer_{layer_id}"
        key = f"{part}_{'no_decay' if no_decay else 'decay'}"
        if key not in groups:
            scale = layer_decay ** (num_layers - layer_id - 1) * (head_lr_mult if part == "head" else 1.0)
            groups[key] = {"name": key, "params": [], "lr": lr * scale, "lr_scale": scale,
                           "weight_decay": 0.0 if no_decay else weight_decay}
        groups[key]["params"].append(p)
    return list(groups.values())
