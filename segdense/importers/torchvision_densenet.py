"""torchvision's DenseNet files (``features.conv0``, ``features.denseblockB.denselayerL.*``, ``classifier``),
in today's key form or the old dotted one of the hosted files (``norm.1``), which
``segdense.backbones.weights.convert_old_keys`` renames as torchvision does."""
from __future__ import annotations

import torch

from segdense.backbones.weights import convert_old_keys

from .architecture import DENSENET_NAMES, chosen_block
from .result import Imported

NAME = "torchvision-densenet"
DESCRIPTION = "torchvision's DenseNet weights (features.conv0.*, features.denseblockB.denselayerL.*)"


def matches(state: dict[str, torch.Tensor]) -> bool:
    return "features.conv0.weight" in state and any(k.startswith("features.denseblock") for k in state)


def rename(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """segdense's DenseNet names (torchvision's current ones) without the classifier; BatchNorm batch counters
    the file lacks (the hosted files predate them) are added as 0. Returns the weights, the classifier keys left
    out and how many counters were added."""
    weights = {k: v for k, v in convert_old_keys(state).items() if not k.startswith("classifier.")}
    dropped = [k for k in state if k.startswith("classifier.")]
    return weights, dropped, add_batch_counters(weights)


def add_batch_counters(weights: dict[str, torch.Tensor]) -> int:
    """Add, as 0, the BatchNorm batch counters (``num_batches_tracked``) that files from before PyTorch 0.4 lack;
    returns how many were added."""
    norms = {k[: -len(".running_mean")] for k in weights if k.endswith(".running_mean")}
    added = [f"{n}.num_batches_tracked" for n in sorted(norms) if f"{n}.num_batches_tracked" not in weights]
    weights.update({k: torch.tensor(0, dtype=torch.long) for k in added})
    return len(added)


def import_checkpoint(checkpoint: dict, path, backbone: str | None, keep_aux: bool, output_stride: int) -> Imported:
    weights, dropped, added = rename(checkpoint["state_dict"])
    notes = [f"left out the ImageNet classifier ({', '.join(dropped)}): segmentation does not use it"
             ] if dropped else []
    if added:
        notes.append(f"{added} BatchNorm batch counters (num_batches_tracked) absent from the file were set to 0")
    block = chosen_block(backbone, DENSENET_NAMES, "densenet_custom", (weights, path))
    return Imported(layout=NAME, weights=weights, backbone=block, notes=notes)
