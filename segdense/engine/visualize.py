"""Colouring label maps and making image / ground-truth / prediction grids."""
from __future__ import annotations

from typing import Sequence

import torch

from segdense.inference.draw import input_picture


def colorize(labels: torch.Tensor, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> torch.Tensor:
    """(N, H, W) class indices → (N, 3, H, W) float RGB in [0, 1]; ignored pixels white."""
    table = torch.zeros(256, 3)
    table[: len(palette)] = torch.tensor([list(c) for c in palette], dtype=torch.float32) / 255
    table[ignore_index] = 1.0
    return table[labels.long().clamp(0, 255).cpu()].permute(0, 3, 1, 2)


def picture(image: torch.Tensor, scaling=None) -> torch.Tensor:
    """Model input (C, H, W) of any band count as (1, 3, H, W) float RGB in [0, 1]: back in the file's units by
    ``scaling`` (the dataset's :class:`~segdense.data.normalisation.InputScaling`), shown as
    :func:`~segdense.inference.draw.input_picture` shows it (8-bit RGB as it is; else the first three bands, one
    band as grey, stretched between their 2nd and 98th percentiles)."""
    return torch.from_numpy(input_picture(image, scaling)).permute(2, 0, 1)[None].float().div_(255)


def comparison_grid(images, masks, predictions, palette, max_items: int = 4, scaling=None) -> torch.Tensor:
    """Rows of image | ground truth | prediction, as one (3, H', W') image for TensorBoard; ``scaling``: how the
    images were normalised (:func:`picture`)."""
    from torchvision.utils import make_grid

    n = min(max_items, images.shape[0])
    rows = []
    for i in range(n):
        rows += [
            picture(images[i], scaling),
            colorize(masks[i : i + 1], palette),
            colorize(predictions[i : i + 1], palette),
        ]
    return make_grid(torch.cat(rows), nrow=3, padding=2)
