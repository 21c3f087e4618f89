"""Colouring label maps and making image / ground-truth / prediction grids."""
from __future__ import annotations

from typing import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def colorize(labels: torch.Tensor, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> torch.Tensor:
    """(N, H, W) class indices → (N, 3, H, W) float RGB in [0, 1]; ignored pixels white."""
    table = torch.zeros(256, 3)
    table[: len(palette)] = torch.tensor([list(c) for c in palette], dtype=torch.float32) / 255
    table[ignore_index] = 1.0
    return table[labels.long().clamp(0, 255).cpu()].permute(0, 3, 1, 2)


def denormalize(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo mean/std normalisation: (N, 3, H, W) → [0, 1]."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1)


def comparison_grid(images, masks, predictions, palette, max_items: int = 4) -> torch.Tensor:
    """Rows of image | ground truth | prediction, as one (3, H', W') image for TensorBoard."""
    from torchvision.utils import make_grid

    n = min(max_items, images.shape[0])
    rows = []
    for i in range(n):
        rows += [
            denormalize(images[i : i + 1]),
            colorize(masks[i : i + 1], palette),
            colorize(predictions[i : i + 1], palette),
        ]
    return make_grid(torch.cat(rows), nrow=3, padding=2)
