"""How overlapping windows' logits are blended, shared by in-memory slide inference and streamed scene prediction so
that the two give the same numbers.

- ``mean``: every window counts the same (mmseg's slide mode).
- ``gaussian``: a window's logits are weighted by a Gaussian of its centre distance, sigma one eighth of the window
  side (nnU-Net's and MONAI's ``sigma_scale=0.125``): a pixel near a window's border, seen with little context,
  counts little, and the seams between windows vanish. Linear ramps would also hide seams, but give a border pixel
  with one-sided context as much weight as half a window away; the Gaussian is what the two reference
  implementations use, so results compare with theirs.

The weight of a window is the outer product of one 1-D profile per axis, so the sum of the weights at a pixel is
the product of two 1-D sums (:func:`weight_sums`): no weight image is kept, and a streamed strip reads its part of
the same two vectors that the in-memory path uses.
"""
from __future__ import annotations

from typing import Sequence

import torch

BLENDS = ("mean", "gaussian")
SIGMA_SCALE = 0.125


def check_blend(blend: str) -> str:
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}; got {blend!r}")
    return blend


def profile(length: int, blend: str) -> torch.Tensor:
    """The 1-D float32 weights of a window ``length`` pixels long: ones (``mean``) or a Gaussian with its maximum
    1 at the window's centre (``gaussian``)."""
    if check_blend(blend) == "mean":
        return torch.ones(length)
    centre, sigma = (length - 1) / 2, max(length * SIGMA_SCALE, 1e-3)
    position = torch.arange(length, dtype=torch.float64)
    return torch.exp(-((position - centre) ** 2) / (2 * sigma ** 2)).float()


def window_weight(height: int, width: int, blend: str) -> torch.Tensor:
    """(height, width) float32 weight of one window: the outer product of the two profiles."""
    return profile(height, blend)[:, None] * profile(width, blend)[None, :]


def weight_sums(size: int, length: int, starts: Sequence[int], blend: str) -> torch.Tensor:
    """(size,) float32: at every position, the sum of the profiles of the windows starting at ``starts``."""
    sums = torch.zeros(size, dtype=torch.float64)
    weights = profile(length, blend).double()
    for start in starts:
        sums[start:start + length] += weights
    return sums.float()


def describe_blend(blend: str) -> str:
    return "mean" if blend == "mean" else f"gaussian(sigma={SIGMA_SCALE:g}*window)"
