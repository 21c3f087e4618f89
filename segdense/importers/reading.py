"""The one shape check every importer uses; files are read by :mod:`segdense.backbones.weights_file`."""
from __future__ import annotations

import os

import torch

from segdense.backbones.weights_file import read_weights_file
from segdense.errors import CheckpointError

__all__ = ["check_fits", "read_weights_file"]


def check_fits(expected: dict[str, torch.Size], weights: dict[str, torch.Tensor], path: str | os.PathLike,
               model: str) -> None:
    """The one shape check: ``weights`` (segdense's names) must hold exactly the keys of ``expected`` (a model's
    state_dict shapes) with the same shapes. The error names the file, the model and the first difference."""
    for key, shape in expected.items():
        if key in weights and tuple(weights[key].shape) != tuple(shape):
            raise CheckpointError(f"{path}: shape mismatch at {key}: the file has {tuple(weights[key].shape)}, "
                                  f"{model} expects {tuple(shape)}")
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path} lacks {missing[0]}{more}, which {model} has")
    unexpected = [k for k in weights if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{path} has {unexpected[0]}{more}, which {model} does not have")
