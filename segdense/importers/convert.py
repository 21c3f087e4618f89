"""``convert_checkpoint``: another program's file in, a segdense checkpoint (or backbone weights file) out."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from segdense.backbones.registry import BACKBONES
from segdense.engine.checkpoint import save_checkpoint
from segdense.errors import CheckpointError, ConfigError, config_values
from segdense.inference.writers import check_writable_dir
from segdense.models.builder import build_model
from segdense.version import __version__

from . import denseaspp_authors, fchardnet_ptsemseg, hardnet_petite, rdnet_imagenet, rdnet_mmseg, torchvision_densenet
from .architecture import model_shapes
from .reading import check_fits, read_weights_file
from .result import Imported

# denseaspp_authors before torchvision_densenet: its files hold a torchvision-named DenseNet too.
LAYOUTS = (rdnet_mmseg, rdnet_imagenet, denseaspp_authors, torchvision_densenet, fchardnet_ptsemseg, hardnet_petite)


def _state_and_meta(obj: object, path: Path) -> dict:
    """``{"state_dict", "meta", "record"}`` of a file: a bare state_dict, or one under ``state_dict``/``model``/
    ``model_state`` (the FC-HarDNet authors'), with a DataParallel ``module.`` prefix removed; ``record`` the
    training record a training script stored beside it (``epoch``, ``best_iou``: numbers, NumPy scalars too)."""
    if isinstance(obj, dict) and "model" in obj and "model_config" in obj:
        raise CheckpointError(f"{path} is a segdense checkpoint already: use it as it is")
    meta = obj.get("meta") if isinstance(obj, dict) else None
    record = {k: obj[k].item() if isinstance(obj[k], np.generic) else obj[k] for k in TRAINING_RECORD
              if isinstance(obj, dict) and isinstance(obj.get(k), (int, float, np.integer, np.floating))}
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (a dict of tensors, bare or under 'state_dict', 'model' "
                              f"or 'model_state'); {known_layouts()}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {"state_dict": obj, "meta": meta if isinstance(meta, dict) else {}, "record": record}


# What a training script stores beside the weights that the conversion reports (the FC-HarDNet authors' train.py).
TRAINING_RECORD = ("epoch", "best_iou")


def known_layouts() -> str:
    return "the layouts tools/convert.py knows: " + "; ".join(f"{m.NAME}: {m.DESCRIPTION}" for m in LAYOUTS)


def import_file(path: str | os.PathLike, backbone: str | Mapping | None = None, aux: bool = True,
                output_stride: int = 32) -> Imported:
    """Read ``path``, recognise its layout and convert it; the shapes are checked against the model it
    describes (built on the meta device: no memory, no initialisation)."""
    path = Path(path)
    checkpoint = _state_and_meta(read_weights_file(path), path)
    layout = next((m for m in LAYOUTS if m.matches(checkpoint["state_dict"])), None)
    if layout is None:
        first = ", ".join(list(checkpoint["state_dict"])[:3])
        raise CheckpointError(f"{path}: unknown layout (its first keys: {first}); {known_layouts()}")
    name = backbone if isinstance(backbone, str) or backbone is None else backbone.get("name")
    if backbone is not None and name not in BACKBONES.names():
        with config_values("backbone"):
            BACKBONES.get(name)  # the registry's message: the names and the closest one
    imported = layout.import_checkpoint(checkpoint, path, backbone, aux, output_stride)
    if checkpoint["record"]:
        imported.notes.append("the file's training record: " + ", ".join(f"{k} {v}" for k, v in
                                                                        checkpoint["record"].items()))
    if imported.model_config is not None:
        build = partial(build_model, **imported.model_config)
    else:
        block = dict(imported.backbone)
        build = partial(BACKBONES.get(block.pop("name")), **block)
    with config_values(f"the model {path} describes"):
        expected = {k: v for k, v in model_shapes(build).items() if k.startswith(imported.part)}
    check_fits(expected, imported.weights, path, describe(imported))
    return imported


def describe(imported: Imported) -> str:
    if imported.model_config is None:
        return imported.backbone["name"]
    config = imported.model_config
    return (f"{config['backbone']['name']} + {config['head']['name']}"
            f"{' + aux' if config['aux_loss'] else ''}, {config['num_classes']} classes")


def output_contents(imported: Imported, source: Path) -> dict:
    """A segdense checkpoint (``model``, ``model_config``, ``dataset``, ``config``) for a whole model; for a
    backbone, its weights under ``state_dict`` (what ``pretrained=`` reads) and its config block."""
    origin = {"file": source.name, "layout": imported.layout, "notes": list(imported.notes)}
    if imported.model_config is None:
        return {"state_dict": imported.weights, "backbone": imported.backbone, "converted_from": origin,
                "segdense_version": __version__}
    return {"model": imported.weights, "model_config": imported.model_config, "dataset": imported.dataset,
            "config": imported.config, "converted_from": origin, "segdense_version": __version__}


def convert_checkpoint(input: str | os.PathLike, output: str | os.PathLike, backbone: str | Mapping | None = None,
                       aux: bool = True, output_stride: int = 32, overwrite: bool = False) -> Imported:
    """Convert ``input`` and write ``output`` atomically; an existing ``output`` is kept unless ``overwrite``."""
    source, target = Path(input), Path(output)
    if target.exists() and not overwrite:
        raise ConfigError(f"output={target} exists; pass overwrite=true to replace it")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"output={target} is the input file; write the conversion to another file")
    imported = import_file(source, backbone, aux, output_stride)
    check_writable_dir(target.parent)
    save_checkpoint(output_contents(imported, source), target)
    return imported
