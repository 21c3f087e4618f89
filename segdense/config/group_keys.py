"""The one check Hydra cannot make: every config group's keys against the constructor they are passed to.

The typed schema refuses wrong types and unknown top-level keys, the constructors refuse values out of range;
this compares each group block (``backbone``, ``head``, ``dataset``, ``loss``, ``optimizer``, ``scheduler``) with
its registered constructor's signature (:meth:`segdense.registry.Registry.signature`) before anything is built,
and reports every problem at once.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterable, Mapping

from segdense.backbones.registry import BACKBONES
from segdense.data.registry import DATASETS
from segdense.engine.loggers import LOGGERS, check_loggers
from segdense.engine.early_stopping import EarlyStopping
from segdense.engine.ema import WeightEMA
from segdense.engine.optimizers import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler
from segdense.errors import ConfigError
from segdense.heads.registry import HEADS
from segdense.losses.base import LOSSES
from segdense.registry import Registry, unknown_name_message

from .overrides import unknown_key_message
from .schema import TrainConfig

# Arguments the builders pass themselves: a config block does not set them.
_PASSED = {
    "head": {"feature_info", "num_classes", "output_stride"},
    "dataset": {"split", "transform"},
    "loss": {"ignore_index", "num_classes", "weight"},
    "optimizer": {"params", "lr", "model"},
    "scheduler": {"t", "total", "optimizer", "total_iterations"},
}
# Keys a block may hold for its builder rather than its constructor.
_BLOCK_KEYS = {"dataset": {"train_split", "val_split", "normalize"}}
# Keyword arguments of the builder function itself, accepted besides the registered constructor's.
_BUILDER_KEYS = {"optimizer": build_optimizer, "scheduler": build_scheduler}
# Blocks that are one class's keyword arguments.
_SETTINGS_BLOCKS = {"early_stop": EarlyStopping, "ema": WeightEMA}
_REGISTRIES = {"backbone": BACKBONES, "head": HEADS, "dataset": DATASETS, "optimizer": OPTIMIZERS,
               "scheduler": SCHEDULERS}


def validate_config(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every problem in ``cfg`` (a plain or OmegaConf mapping)."""
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    errors = [unknown_key_message(key, known, "conf/config.yaml") for key in cfg if key not in known + ["hydra"]]
    for group, registry in _REGISTRIES.items():
        errors += check_block(group, registry, dict(cfg[group]))
    for key in sorted(set(cfg.get("task") or {}) - {"name", "threshold"}):
        errors.append(unknown_key_message(f"task.{key}", ["name", "threshold"], "conf/task/"))
    for group, cls in _SETTINGS_BLOCKS.items():
        accepted = _keywords(cls)
        errors += [f"{group}.{key} is not a setting of {group}; valid keys: {', '.join(sorted(accepted))}"
                   for key in dict(cfg.get(group) or {}) if key not in accepted]
    loss = dict(cfg["loss"])
    for key in sorted(set(loss) - {"terms", "aux_weight", "class_weight"}):
        errors.append(unknown_key_message(f"loss.{key}", ["aux_weight", "class_weight", "terms"], "conf/loss/"))
    if not loss.get("terms"):
        errors.append("loss.terms is empty: list at least one term, e.g. [{name: cross_entropy, weight: 1.0}]")
    for i, term in enumerate(loss.get("terms") or []):
        block = {k: v for k, v in dict(term).items() if k != "weight"} if isinstance(term, Mapping) else {}
        errors += [f"loss.terms[{i}]: {e}" for e in check_block("loss", LOSSES, block)]
    errors += check_loggers(list(cfg.get("logger") or []), {name: dict(cfg[name]) for name in LOGGERS.names() if name in cfg})
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def check_block(group: str, registry: Registry, block: dict) -> list[str]:
    """The problems of one block ``{"name": ..., **arguments}``: an unknown name, or keys that its constructor
    (or the builder that calls it) does not take."""
    name = block.pop("name", None)
    if name not in registry:
        return [unknown_name_message(registry.kind, name, registry.names())]
    accepted, open_ended = registry.signature(name)
    if open_ended:  # the constructor takes any keyword: nothing to check against
        return []
    passed = _PASSED.get(group, set())
    accepted = (set(accepted) | _keywords(_BUILDER_KEYS.get(group))) - passed
    return [f"{group}.{key} is not an argument of {name}; valid keys: {', '.join(sorted(accepted))}"
            for key in block if key not in accepted and key not in _BLOCK_KEYS.get(group, ())]


def _keywords(fn: Callable | None) -> set[str]:
    if fn is None:
        return set()
    params: Iterable[inspect.Parameter] = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"name"}
