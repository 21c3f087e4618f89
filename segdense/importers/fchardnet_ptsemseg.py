"""The FC-HarDNet authors' training checkpoints (PingoLH/FCHarDNet ``train.py``): ``torch.save({"epoch",
"model_state", "optimizer_state", "scheduler_state", "best_iou"}, "*.pkl")``, ``model_state`` their ``hardnet``
model's state_dict (``base.*``, ``conv1x1_up.*``, ``denseBlocksUp.*``, ``finalConv.*``), under DataParallel's
``module.`` prefix when saved from it (removed on reading).

Their Cityscapes loader feeds BGR images normalised by ImageNet's mean and std (in BGR order) on 0-255; segdense
reads RGB, so the first conv's input channels are reversed, which makes the converted model compute on an RGB image
what theirs computes on its BGR copy, with ImageNet's RGB mean and std.
"""
from __future__ import annotations

import torch

from segdense.backbones.fchardnet import rgb_first_conv
from segdense.data.cityscapes import CLASS_NAMES, PALETTE
from segdense.errors import ConfigError

from .architecture import shape_of
from .result import Imported

NAME = "fchardnet-ptsemseg"
DESCRIPTION = ("the FC-HarDNet authors' training checkpoints (model_state: base.*, conv1x1_up.*, denseBlocksUp.*, "
               "finalConv.*)")
FIRST_CONV = "base.0.conv.weight"
CLASSIFIER = "finalConv."
BGR_NOTE = "the first conv's input channels reversed: the authors' model reads BGR images, segdense reads RGB"
# Their loader's normalisation (ImageNet's mean and std, on 0-255), in RGB order.
NORMALIZE = {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HEAD = {"name": "tiramisu", "align_corners": True}  # their finalConv, logits upsampled with align_corners=True


def matches(state: dict[str, torch.Tensor]) -> bool:
    return FIRST_CONV in state and CLASSIFIER + "weight" in state


def authors_to_segdense(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segdense's names for the authors' keys: ``finalConv`` becomes ``head.classifier``, the rest goes under
    ``backbone.`` unchanged."""
    return {(f"head.classifier.{k[len(CLASSIFIER):]}" if k.startswith(CLASSIFIER) else f"backbone.{k}"): v
            for k, v in state.items()}


def import_checkpoint(checkpoint: dict, path, backbone: str | None, keep_aux: bool, output_stride: int) -> Imported:
    if backbone not in (None, "fchardnet70"):
        raise ConfigError(f"backbone={backbone}: {path} is an FC-HarDNet-70 (backbone=fchardnet70)")
    state = checkpoint["state_dict"]
    num_classes = int(shape_of(state, CLASSIFIER + "weight", path)[0])
    weights = rgb_first_conv(authors_to_segdense(state), f"backbone.{FIRST_CONV}")
    cityscapes = num_classes == len(CLASS_NAMES)
    notes = [BGR_NOTE, "Cityscapes' 19 train ids" if cityscapes else
             f"the file names no classes: they are called 0..{num_classes - 1}"]
    dataset = ({"name": "cityscapes", "class_names": list(CLASS_NAMES), "palette": [list(c) for c in PALETTE]}
               if cityscapes else {"name": "unknown", "class_names": [str(i) for i in range(num_classes)],
                                   "palette": []})
    model_config = {"backbone": {"name": "fchardnet70"}, "head": dict(HEAD), "num_classes": num_classes,
                    "aux_loss": False}
    return Imported(layout=NAME, weights=weights, model_config=model_config, dataset=dataset, notes=notes,
                    config={"augmentation": {"eval": [dict(NORMALIZE)]}})
