"""Per-class loss weights from pixel frequencies: median-frequency balancing (Eigen & Fergus, ICCV 2015), clipped.

For each class c, ``freq(c) = pixels labelled c / labelled pixels of the images in which c occurs``; then
``weight(c) = median over occurring classes of freq / freq(c)``, clipped to ``[min_weight, max_weight]``. A class
at the median frequency weighs 1, a class ten times rarer ~10 (the clip stops one rare class from dominating). A
class that never occurs in the statistics gets weight 1: it has no pixels to weigh in a pixel-wise loss.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MIN_WEIGHT, MAX_WEIGHT = 0.1, 10.0


def median_frequency_weights(class_pixels: Sequence[int], pixels_of_images_with_class: Sequence[int],
                             min_weight: float = MIN_WEIGHT, max_weight: float = MAX_WEIGHT) -> list[float]:
    """Clipped median-frequency weights (module docstring) from two per-class counts: the pixels labelled with
    each class, and the labelled pixels of the images in which that class occurs."""
    pixels = np.asarray(class_pixels, dtype=np.float64)
    context = np.asarray(pixels_of_images_with_class, dtype=np.float64)
    if pixels.shape != context.shape or pixels.ndim != 1:
        raise ValueError(f"need one count per class in both arguments, got {pixels.shape} and {context.shape}")
    if not 0 < min_weight <= max_weight:
        raise ValueError(f"need 0 < min_weight <= max_weight, got {min_weight}, {max_weight}")
    present = pixels > 0
    weights = np.ones_like(pixels)
    if present.any():
        freq = pixels[present] / context[present]
        weights[present] = np.clip(np.median(freq) / freq, min_weight, max_weight)
    return [round(float(w), 4) for w in weights]


def class_weight_tensor(weight: Sequence[float] | None, num_classes: int | None) -> torch.Tensor | None:
    """``weight`` as a float32 tensor after checking it is one non-negative number per class, not all zero."""
    if weight is None:
        return None
    if isinstance(weight, str):
        raise ValueError(f"class weight must be a list of numbers here, got {weight!r} "
                         "('auto' is resolved from the training data by the training job)")
    w = torch.as_tensor(list(weight), dtype=torch.float32)
    if (w.dim() != 1 or (num_classes is not None and w.numel() != num_classes) or bool((w < 0).any())
            or not bool((w > 0).any())):
        raise ValueError(
            f"class weight must be one non-negative number per class"
            f"{f' ({num_classes})' if num_classes is not None else ''}, not all zero; got {list(weight)}"
        )
    return w
