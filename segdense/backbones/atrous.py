"""What a backbone needs to run past its output stride by dilation (an a-trous network) and still hand decoders
maps centred as its strided maps are: the padding of a two-tap (2x2) kernel run at stride 1, and the bilinear
resampling that moves a map back by the half-integer number of pixels the dilated network lags the strided one.
RDNet and the HarDNets use both (docs/rdnet.md, docs/hardnet.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["two_tap_padding", "moved_up_left", "half_pixel_centred"]


def two_tap_padding(dilation: int) -> tuple[int, int, int, int]:
    """``F.pad``'s (left, right, top, bottom) for a 2x2 kernel of ``dilation`` at stride 1 that keeps the map size:
    at an even dilation half of it on every side (the output at q reads q - d/2 and q + d/2, centred); at dilation 1,
    whose two taps have no centre pixel, 1 on the right and bottom (the output reads q and q + 1, half a pixel right
    and down of q)."""
    before = dilation // 2
    return (before, dilation - before) * 2


def moved_up_left(x: torch.Tensor, pixels: float) -> torch.Tensor:
    """``x`` resampled ``pixels`` up and left, bilinearly: ``pixels`` is 0 (``x`` itself) or a half-integer m + 1/2,
    and each output pixel is the mean of the 2x2 input pixels m and m + 1 above and left of it (the first row and
    column repeated beyond the edge, as ``align_corners=False`` clamps)."""
    if pixels == 0:
        return x
    m = pixels - 0.5
    if m < 0 or m != int(m):
        raise ValueError(f"pixels must be 0 or a positive half-integer, got {pixels!r}")
    m = int(m)
    h, w = x.shape[-2:]
    return F.avg_pool2d(F.pad(x, (m + 1, 0, m + 1, 0), mode="replicate"), 2, stride=1)[..., :h, :w]


def half_pixel_centred(x: torch.Tensor) -> torch.Tensor:
    """``x`` resampled half a pixel up and left: each pixel the mean of itself and its upper, left and upper-left
    neighbours."""
    return moved_up_left(x, 0.5)
