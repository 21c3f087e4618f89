"""Inference strategies as ``infer(model, images) -> logits`` callables for
:func:`segdense.runtime.evaluate_loader` and :class:`segdense.Predictor`.

- :func:`whole_logits`: one forward pass on the whole image.
- :class:`SlideInference`: overlapping ``crop_size`` windows every ``stride`` pixels; the logits of pixels
  covered by several windows are averaged (mmseg's "slide" mode) or weighted by a Gaussian (``blend``,
  :mod:`~segdense.inference.blending`). All windows of a batch are stacked and run
  ``max_batch`` at a time.
- :class:`MultiScaleFlip`: the base strategy at each scale (and mirrored), logits resized back to the input
  size and averaged.

Each returns float32 logits (N, C, H, W) at the input's size. Batches padded by ``pad_collate`` are processed
as they are: the padding sits at the bottom/right, scaling keeps it there and flipping is undone before
averaging, so every original pixel is predicted at its place and padded pixels carry label 255 (ignored).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from segdense.runtime import Infer, whole_logits

from .blending import check_blend, describe_blend, weight_sums, window_weight



def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, (int, float)) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive integer or [height, width], got {value!r}")
    return pair  # type: ignore[return-value]


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of length ``crop`` every ``stride`` covering ``size`` (the last one flush with the
    end); one window at 0 when the image is smaller than the crop."""
    if size <= crop:
        return [0]
    count = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(count)})


class SlideInference:
    """Sliding-window inference with ``crop_size`` windows every ``stride`` pixels, overlaps blended by ``blend``
    (:mod:`~segdense.inference.blending`: ``mean`` averages, ``gaussian`` weights by distance to the window's
    centre)."""

    def __init__(self, crop_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 base: Infer = whole_logits, max_batch: int = 8, blend: str = "mean"):
        self.crop = _pair(crop_size, "crop_size")
        # default: two thirds of the crop (mmseg's 512 crop / 341 stride)
        self.stride = _pair(stride, "stride") if stride is not None else tuple(max(1, c * 2 // 3) for c in self.crop)
        if any(s > c for s, c in zip(self.stride, self.crop)):
            raise ValueError(f"stride {list(self.stride)} larger than crop_size {list(self.crop)} would leave gaps")
        self.base = base
        self.max_batch = max(1, int(max_batch))
        self.blend = check_blend(blend)

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        ch, cw = min(self.crop[0], h), min(self.crop[1], w)
        boxes = [(y, x) for y in window_starts(h, ch, self.stride[0]) for x in window_starts(w, cw, self.stride[1])]
        crops = torch.cat([images[:, :, y:y + ch, x:x + cw] for y, x in boxes])  # window-major: (len(boxes) * n)
        outputs = [self.base(model, chunk) for chunk in crops.split(self.max_batch * n)]
        logits = torch.cat(outputs)
        total = logits.new_zeros((n, logits.shape[1], h, w))
        weight = window_weight(ch, cw, self.blend).to(logits.device)
        for i, (y, x) in enumerate(boxes):
            total[:, :, y:y + ch, x:x + cw] += logits[i * n:(i + 1) * n] * weight
        rows = weight_sums(h, ch, window_starts(h, ch, self.stride[0]), self.blend).to(logits.device)
        cols = weight_sums(w, cw, window_starts(w, cw, self.stride[1]), self.blend).to(logits.device)
        return total / (rows[:, None] * cols[None, :])

    def __repr__(self) -> str:
        blend = "" if self.blend == "mean" else f", blend={describe_blend(self.blend)}"
        return f"SlideInference(crop_size={list(self.crop)}, stride={list(self.stride)}{blend})"


class MultiScaleFlip:
    """Test-time augmentation: ``base`` at every scale in ``scales`` (and on the mirrored image when ``flip``),
    logits resized (bilinear) to the input size and averaged. ``min_size`` keeps scaled images large enough for
    the backbone."""

    def __init__(self, scales: Sequence[float] = (1.0,), flip: bool = False, base: Infer = whole_logits,
                 min_size: int = 1):
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales must be a non-empty list of positive numbers, got {list(scales)}")
        self.flip = bool(flip)
        self.base = base
        self.min_size = int(min_size)

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        total = None
        for scale in self.scales:
            size = (max(self.min_size, round(h * scale)), max(self.min_size, round(w * scale)))
            scaled = images
            if size != (h, w):
                scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            views = [(scaled, False)] + ([(scaled.flip(-1), True)] if self.flip else [])
            for view, flipped in views:
                logits = self.base(model, view).float()
                if flipped:
                    logits = logits.flip(-1)
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                total = logits if total is None else total + logits
        return total / (len(self.scales) * (2 if self.flip else 1))

    def __repr__(self) -> str:
        return f"MultiScaleFlip(scales={self.scales}, flip={self.flip}, base={describe_infer(self.base)})"


def describe_infer(infer: Infer) -> str:
    """A readable name for an inference strategy (``whole``, ``SlideInference(...)``, ...)."""
    if infer is whole_logits:
        return "whole"
    return getattr(infer, "__name__", None) or repr(infer)


MODES = ("whole", "slide")


def build_infer(mode: str = "whole", crop_size: int | Sequence[int] | None = None,
                stride: int | Sequence[int] | None = None, scales: Sequence[float] | None = None,
                flip: bool = False, min_size: int = 1, max_batch: int = 8, blend: str = "mean") -> Infer:
    """The inference strategy for ``mode`` (``whole`` or ``slide``, its windows blended by ``blend``), wrapped in
    multi-scale/flip TTA when ``scales`` is more than ``[1.0]`` or ``flip`` is set."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "slide":
        if crop_size is None:
            raise ValueError("mode=slide needs crop_size (e.g. crop_size=[512,512])")
        base: Infer = SlideInference(crop_size, stride, max_batch=max_batch, blend=blend)
    else:
        base = whole_logits
    scales = [1.0] if scales is None else list(scales)
    if scales == [1.0] and not flip:
        return base
    return MultiScaleFlip(scales, flip, base=base, min_size=min_size)
