"""Rebuilding a trained model from a training checkpoint (``.pt``), a shared ``.safetensors`` file, or an ONNX
export (``.onnx``, run by ONNX Runtime: :mod:`segdense.inference.onnx_model`) alone.

A ``.safetensors`` file written by :func:`segdense.export.save_safetensors` holds the model's weights and, in its
string metadata, ``segdense`` (JSON): ``model_config``, ``class_names``, ``palette``, ``dataset``,
``eval_pipeline`` and ``crop_size`` — everything inference needs, nothing of the optimizer.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from segdense.errors import CheckpointError, MissingFileError
from segdense.models.builder import build_model, upgrade_model_config
from segdense.runtime import load_checkpoint
from segdense.tasks import Task, build_task

from .onnx_model import METADATA_KEY, load_onnx_model

logger = logging.getLogger("segdense.inference")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_EVAL_PIPELINE = [{"type": "Normalize", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}]


@dataclass
class ModelBundle:
    """A rebuilt model (eval mode, on CPU) and what inference needs to know about it."""

    model: nn.Module
    class_names: list[str]
    palette: list[list[int]]
    dataset: dict = field(default_factory=dict)  # {name, config: the training dataset block}
    eval_pipeline: list = field(default_factory=lambda: list(DEFAULT_EVAL_PIPELINE))
    crop_size: list[int] | None = None  # the training crop: the default window for slide inference
    source: str = ""
    task_config: dict = field(default_factory=lambda: {"name": "multiclass"})  # segdense.tasks.build_task's

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def reading(self) -> dict:
        """How the training dataset read its images: ``bands`` (which, in which order) and ``layout``."""
        config = (self.dataset or {}).get("config") or {}
        return {"bands": config.get("bands"), "layout": config.get("layout")}

    @property
    def takes_8bit_rgb(self) -> bool:
        """Whether the model was trained on the default normalisation (ImageNet's, for 8-bit RGB), rather than
        on a ``dataset.normalize`` of its own."""
        return not ((self.dataset or {}).get("config") or {}).get("normalize")

    @property
    def task(self) -> Task:
        """How the model's logits become labels and how they are scored (:mod:`segdense.tasks`)."""
        return build_task(class_names=self.class_names, **self.task_config)

    def metadata(self) -> dict:
        """JSON-serialisable description written next to exported weights."""
        return {
            "model_config": dict(getattr(self.model, "model_config", {})),
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "dataset": self.dataset,
            "eval_pipeline": self.eval_pipeline,
            "crop_size": self.crop_size,
            "task": dict(self.task_config),
        }


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """The model in ``path`` (a segdense ``.pt`` checkpoint, ``.safetensors`` file or ``.onnx`` export) with its
    class names, palette, dataset and eval pipeline. One :class:`CheckpointError` (or FileNotFoundError) per
    problem. An ONNX file gives an :class:`~segdense.inference.onnx_model.OnnxModel` run by ONNX Runtime."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.suffix == ".onnx":
        model, meta = load_onnx_model(path)
    else:
        state_dict, meta = _read_safetensors(path) if path.suffix == ".safetensors" else _read_checkpoint(path)
        model = rebuild_model(meta.get("model_config"), state_dict, path)
    outputs = int(model.model_config.get("num_classes", 0))
    task_config = dict(meta.get("task") or {"name": "multiclass"})
    names = list(meta.get("class_names") or [str(i) for i in range(outputs)])
    task = build_task(class_names=names, **task_config)
    if task.out_channels != outputs:
        raise CheckpointError(f"{path}: its {task.name} task over {len(names)} classes needs {task.out_channels} "
                              f"outputs but its model has {outputs}")
    palette = [list(map(int, c)) for c in (meta.get("palette") or [])] or default_palette(len(names))
    eval_pipeline = meta.get("eval_pipeline")
    if not eval_pipeline:
        logger.warning("%s does not record its eval pipeline (the training config's augmentation.eval): images "
                       "are normalised with ImageNet's mean and std, which is wrong if the model was trained with "
                       "another normalisation", path)
        eval_pipeline = DEFAULT_EVAL_PIPELINE
    from segdense.data.normalisation import with_normalisation  # albumentations: imported when a model is loaded

    eval_pipeline = with_normalisation(eval_pipeline, (meta.get("dataset") or {}).get("config", {}).get("normalize"))
    return ModelBundle(
        model=model, class_names=names, palette=palette, dataset=dict(meta.get("dataset") or {}),
        eval_pipeline=list(eval_pipeline),
        crop_size=list(meta["crop_size"]) if meta.get("crop_size") else None, source=str(path),
        task_config=task_config,
    )


def min_input_size(model: nn.Module) -> int:
    """The smallest height/width the model accepts (its backbone's ``min_input_size``; 1 when it does not say)."""
    own = getattr(model, "min_input_size", None)
    if own is None:
        own = getattr(getattr(model, "backbone", None), "min_input_size", 1)
    return int(own)


def input_channels(model: nn.Module) -> int:
    """The band count ``model`` takes: its config's (or its backbone's) ``in_channels``; 3 when neither says."""
    backbone = (getattr(model, "model_config", {}) or {}).get("backbone") or {}
    return int(backbone.get("in_channels", getattr(getattr(model, "backbone", None), "in_channels", 3)))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A full segmentation model (eval mode) from a segdense ``.pt`` checkpoint or ``.safetensors`` file;
    ``model.model_config`` rebuilds its architecture, ``model.class_names``/``model.palette`` describe its output."""
    bundle = load_bundle(path)
    model = bundle.model
    model.class_names = bundle.class_names
    model.palette = bundle.palette
    return model.to(device)


def rebuild_model(model_config: Any, state_dict: dict, path: Path) -> nn.Module:
    if not isinstance(model_config, dict):
        raise CheckpointError(f"{path}: no model_config (the build_model arguments) was found in it")
    config = upgrade_model_config(model_config)
    try:
        model = build_model(**config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: its model_config cannot be built ({e})") from None
    result = _load_weights(model, state_dict)
    if result:
        described = f"{config['backbone']['name']} + {config['head']['name']}, {config.get('num_classes')} classes"
        raise CheckpointError(
            f"{path}: its weights do not fit the model its model_config describes ({described}): {result}. "
            "Was the file written for another model configuration?"
        )
    return model.eval()


def _load_weights(model: nn.Module, state_dict: dict) -> str:
    """Load strictly; '' on success, else a short description of the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            problems.append(f"{len(items)} {label} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})")
    if problems:
        return "; ".join(problems)
    model.load_state_dict(state_dict, strict=True)
    return ""


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    try:
        state = load_checkpoint(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    dataset = dict(state.get("dataset") or {})
    config = state.get("config") or {}
    meta = {
        "model_config": state.get("model_config"),
        "class_names": dataset.pop("class_names", None),
        "palette": dataset.pop("palette", None),
        "dataset": dataset,
        "eval_pipeline": (config.get("augmentation") or {}).get("eval"),
        "crop_size": config.get("crop_size"),
        "task": state.get("task"),
    }
    return state["model"], meta


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read as safetensors (corrupt or truncated): {e}") from None
    if raw is None:
        raise CheckpointError(
            f"{path} holds weights without segdense metadata (model_config, class names); write it with "
            "tools/export.py format=safetensors, or pass a backbone state_dict to the backbone's pretrained= instead"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its segdense metadata is not valid JSON ({e})") from None
    return state_dict, meta


def default_palette(num_classes: int) -> list[list[int]]:
    """The VOC colour map (bit-interleaved), as used when a model carries no palette."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette
