"""Checks a composed configuration before anything is built or loaded.

Hydra and the typed schema already refuse unknown top-level keys, wrong types and unknown group
options. This adds what they cannot know: each group block's keys against the constructor they
feed, registry names, and the output strides valid for the chosen backbone.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

from segdense.errors import ConfigError  # noqa: F401  (raised here; importable from here as before)
from segdense.registry import unknown_name_message


def _accepted(fn: Callable, skip: Iterable[str] = ()) -> tuple[set[str], bool]:
    """Parameter names of ``fn`` (minus ``skip``) and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    has_var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return names - set(skip), has_var_kw


def _check_keys(group: str, option: str, keys: Iterable[str], fns: list[Callable], skip=(), errors=None) -> None:
    accepted: set[str] = set()
    open_ended = True
    for fn in fns:
        names, var_kw = _accepted(fn, skip)
        accepted |= names
        open_ended = var_kw
        if not var_kw:
            break
    if open_ended:  # the last function still forwards **kwargs: nothing to check against
        return
    for key in keys:
        if key not in accepted:
            errors.append(
                f"{group}.{key} is not an argument of {option}; valid keys: {', '.join(sorted(accepted))}"
            )


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every problem in ``cfg`` (a plain or OmegaConf mapping)."""
    errors: list[str] = []
    _check_top_level(cfg, errors)
    _check_backbone(dict(cfg["backbone"]), cfg["output_stride"], errors)
    _check_head(dict(cfg["head"]), errors)
    _check_dataset(dict(cfg["dataset"]), errors)
    _check_loss(dict(cfg["loss"]), errors)
    _check_optimizer(dict(cfg["optimizer"]), errors)
    _check_scheduler(dict(cfg["scheduler"]), errors)
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def _check_top_level(cfg, errors: list[str]) -> None:
    import dataclasses

    from .overrides import unknown_key_message
    from .schema import TrainConfig

    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in cfg:
        if key not in known and key != "hydra":
            errors.append(unknown_key_message(key, known, "conf/config.yaml"))
    for key in ("iterations", "batch_size", "val_batch_size", "val_interval", "checkpoint_interval", "log_interval"):
        if cfg[key] < (1 if key in ("iterations", "batch_size", "val_batch_size", "log_interval") else 0):
            errors.append(f"{key} must be positive, got {cfg[key]}")
    if cfg["num_workers"] < 0:
        errors.append(f"num_workers must be >= 0, got {cfg['num_workers']}")
    crop = list(cfg["crop_size"])
    if len(crop) != 2 or any(c < 1 for c in crop):
        errors.append(f"crop_size must be [height, width] of positive ints, got {crop}")
    if cfg["lr"] <= 0:
        errors.append(f"lr must be positive, got {cfg['lr']}")
    if cfg["amp"] not in ("auto", "off", "bf16", "fp16"):
        errors.append(f"amp must be one of auto, off, bf16, fp16; got {cfg['amp']!r}")
    if cfg["channels_last"] not in ("auto", True, False):
        errors.append(f"channels_last must be auto, true or false; got {cfg['channels_last']!r}")
    if cfg["validate_data"] not in ("quick", "full", "off"):
        errors.append(f"validate_data must be quick, full or off; got {cfg['validate_data']!r}")
    device = str(cfg["device"])
    if device != "auto" and device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
        errors.append(f"device must be auto, cpu, cuda or cuda:N; got {device!r}")
    if cfg["grad_clip"] is not None and cfg["grad_clip"] <= 0:
        errors.append(f"grad_clip must be positive or null, got {cfg['grad_clip']}")


def _check_backbone(block: dict, output_stride: int, errors: list[str]) -> None:
    from segdense.backbones import DenseNet, list_backbones, valid_output_strides
    from segdense.backbones.resnet import RESNET_OUTPUT_STRIDES
    from segdense.backbones.registry import _BACKBONES

    name = block.pop("name", None)
    if name not in _BACKBONES:
        errors.append(unknown_name_message("backbone", name, list_backbones()))
        return
    builder = _BACKBONES[name]
    block.pop("output_stride", None)
    _check_keys("backbone", name, block, [builder, DenseNet.__init__], skip=("self",), errors=errors)
    if name.startswith("densenet"):
        units = block.get("num_units_per_block", (6, 12, 24, 16))
        initial = block.get("initial_output_stride", 4)
        valid = valid_output_strides(len(units), initial)
        if output_stride not in valid:
            errors.append(
                f"output_stride={output_stride} is not valid for {name} "
                f"(initial_output_stride={initial}); valid output strides: {valid}"
            )
    elif name.startswith("resnet") and output_stride not in RESNET_OUTPUT_STRIDES:
        errors.append(f"output_stride={output_stride} is not valid for {name}; valid output strides: {list(RESNET_OUTPUT_STRIDES)}")


def _check_head(block: dict, errors: list[str]) -> None:
    from segdense.heads.registry import _HEADS, list_heads

    name = block.pop("name", None)
    if name not in _HEADS:
        errors.append(unknown_name_message("head", name, list_heads()))
        return
    head = _HEADS[name]
    fn = head.__init__ if inspect.isclass(head) else head
    _check_keys("head", name, block, [fn], skip=("self", "feature_info", "num_classes", "output_stride"), errors=errors)


def _check_dataset(block: dict, errors: list[str]) -> None:
    from segdense.data.registry import _DATASETS, list_datasets

    name = block.pop("name", None)
    if name not in _DATASETS:
        errors.append(unknown_name_message("dataset", name, list_datasets()))
        return
    for key in ("train_split", "val_split"):
        if not block.pop(key, None):
            errors.append(f"dataset.{key} is missing (the split to {key.split('_')[0]} on)")
    ds = _DATASETS[name]
    fns = [ds.__init__] if inspect.isclass(ds) else [ds, _dataset_class(name).__init__]
    _check_keys("dataset", name, block, fns, skip=("self", "split", "transform"), errors=errors)


def _dataset_class(name: str):
    from segdense.data import VOCSegmentation

    return VOCSegmentation  # the only builder function in the registry (voc_aug) wraps VOC


def _check_loss(block: dict, errors: list[str]) -> None:
    from segdense.losses import list_losses

    terms = block.get("terms") or []
    if not terms:
        errors.append("loss.terms is empty: list at least one term, e.g. [{name: cross_entropy, weight: 1.0}]")
    for i, term in enumerate(terms):
        name = term.get("name") if isinstance(term, Mapping) else None
        if name not in list_losses():
            errors.append(f"loss.terms[{i}]: " + unknown_name_message("loss", name, list_losses()))
    extra = set(block) - {"terms", "aux_weight", "class_weight"}
    if extra:
        errors.append(f"loss has unknown keys {sorted(extra)}; valid keys: aux_weight, class_weight, terms")
    weights = block.get("class_weight")
    if weights is not None and weights != "auto" and (
            isinstance(weights, str) or not all(isinstance(w, (int, float)) and w >= 0 for w in weights)):
        errors.append(f"loss.class_weight must be null, auto, or a list of one non-negative number per class; "
                      f"got {weights!r}")


def _check_optimizer(block: dict, errors: list[str]) -> None:
    from segdense.engine.optim import OPTIMIZERS

    name = block.pop("name", None)
    if name not in OPTIMIZERS:
        errors.append(unknown_name_message("optimizer", name, sorted(OPTIMIZERS)))
        return
    for key in ("head_lr_mult", "no_decay_norm_bias"):
        block.pop(key, None)
    _check_keys("optimizer", name, block, [OPTIMIZERS[name].__init__], skip=("self", "params", "lr"), errors=errors)


def _check_scheduler(block: dict, errors: list[str]) -> None:
    from segdense.engine.optim import SCHEDULERS, lr_factor

    name = block.pop("name", None)
    if name not in SCHEDULERS:
        errors.append(unknown_name_message("scheduler", name, list(SCHEDULERS)))
        return
    _check_keys("scheduler", name, block, [lr_factor], skip=("name", "iteration", "total"), errors=errors)
