"""The DenseASPP authors' Cityscapes checkpoints (DeepMotionAIResearch/DenseASPP, ``models/DenseASPP.py``, saved by
PyTorch 0.3.1, usually with DataParallel's ``module.`` prefix): ``features.*`` (a DenseNet in torchvision's old dotted
names plus ``transition4``), ``ASPP_{3,6,12,18,24}.{norm,conv}.{1,2}.*`` and ``classification.1.*``.

They become ``densenet161 output_stride=8 final_transition=true`` + ``denseaspp original=true`` (see
``segdense.heads.denseaspp``), with the authors' test normalisation and the 19 Cityscapes train classes.
"""
from __future__ import annotations

import re

import torch

from segdense.backbones.weights import convert_old_keys
from segdense.data.cityscapes import CLASS_NAMES, PALETTE
from segdense.errors import CheckpointError

from .architecture import shape_of
from .result import Imported
from .torchvision_densenet import add_batch_counters

NAME = "denseaspp-authors"
DESCRIPTION = "the DenseASPP authors' Cityscapes model (features.*, ASPP_3.*, ..., classification.1.*)"
RATES = (3, 6, 12, 18, 24)
# Their inference.py: ToTensor, then Normalize with the Cityscapes statistics below.
AUTHORS_NORMALIZE = {"type": "Normalize", "mean": [0.290101, 0.328081, 0.286964],
                     "std": [0.182954, 0.186566, 0.184475]}
_UNIT_KEY = re.compile(r"^ASPP_(\d+)\.(norm|conv)\.([12])\.(.+)$")
# Positions in segdense's unit (nn.Sequential): with the leading BN-ReLU, and without it (the first unit).
_POSITIONS = {True: {("norm", "1"): 0, ("conv", "1"): 2, ("norm", "2"): 3, ("conv", "2"): 5},
              False: {("conv", "1"): 0, ("norm", "2"): 1, ("conv", "2"): 3}}


def matches(state: dict[str, torch.Tensor]) -> bool:
    return "features.conv0.weight" in state and any(k.startswith("ASPP_") for k in state)


def _head_key(key: str, path) -> str:
    if key.startswith("classification.1."):
        return "head.classifier.1." + key[len("classification.1."):]
    m = _UNIT_KEY.match(key)
    position = None
    if m and int(m.group(1)) in RATES:
        index = RATES.index(int(m.group(1)))
        position = _POSITIONS[index > 0].get((m.group(2), m.group(3)))
    if position is None:
        raise CheckpointError(f"{path}: unexpected key {key} in a DenseASPP checkpoint (its head has ASPP_3, "
                              f"ASPP_6, ASPP_12, ASPP_18, ASPP_24 and classification.1)")
    return f"head.units.{index}.{position}.{m.group(4)}"


def rename(state: dict[str, torch.Tensor], path) -> tuple[dict[str, torch.Tensor], int]:
    """segdense's names for the authors' keys, with the BatchNorm batch counters 0.3.1 did not save added as 0;
    returns the weights and how many counters were added."""
    weights = {}
    for key, value in convert_old_keys(state).items():
        weights["backbone." + key if key.startswith("features.") else _head_key(key, path)] = value
    return weights, add_batch_counters(weights)


def import_checkpoint(checkpoint: dict, path, backbone: str | None, keep_aux: bool, output_stride: int) -> Imported:
    if backbone not in (None, "densenet161"):
        raise CheckpointError(f"{path} is the DenseASPP authors' DenseNet-161 model; backbone={backbone} cannot "
                              "take it (leave backbone unset)")
    weights, added = rename(checkpoint["state_dict"], path)
    num_classes = int(shape_of(weights, "head.classifier.1.weight", path)[0])
    # (d0, d1) from the first unit's convs: 512, 128 for DenseASPP-161 (cfgs/DenseASPP161.py).
    widths = [int(shape_of(weights, f"head.units.0.{i}.weight", path)[0]) for i in (0, 3)]
    model_config = {"backbone": {"name": "densenet161", "output_stride": 8, "final_transition": True},
                    "head": {"name": "denseaspp", "original": True, "widths": widths}, "num_classes": num_classes, "aux_loss": False}
    notes = ["built at output stride 8 with the authors' fourth transition and their DenseASPP head",
             "test normalisation from the authors' inference.py; whole 1024x2048 images, as they test"]
    if added:
        notes.append(f"{added} BatchNorm batch counters (num_batches_tracked) absent from the file were set to 0")
    cityscapes = num_classes == len(CLASS_NAMES)
    dataset = ({"name": "cityscapes", "class_names": list(CLASS_NAMES), "palette": [list(c) for c in PALETTE]}
               if cityscapes else {"name": "unknown", "class_names": [f"class{i}" for i in range(num_classes)]})
    return Imported(layout=NAME, weights=weights, model_config=model_config, notes=notes, dataset=dataset,
                    config={"augmentation": {"eval": [AUTHORS_NORMALIZE]}})
