"""Turning an image of any dtype and band count into the model's float input, once, from the dataset's
configuration (``dataset.normalize``), and the checks that say, per file, why an image cannot be.

``dataset.normalize`` is one of:
- ``{mean: [...], std: [...]}``: per-band mean and std in the file's own units (``tools/check_dataset.py``
  prints them);
- ``{scale: 1/65535}`` (a number or a fraction ``"p/q"``), optionally with ``mean``/``std`` in the scaled units;
- ``{low: [...], high: [...]}``: per-band clipping values (e.g. the 2nd and 98th percentiles), each band clipped
  to [low, high] and mapped to [0, 1], optionally with ``mean``/``std`` after that.
Without it the augmentation pipeline's own ``Normalize`` step applies (ImageNet's RGB statistics, for 8-bit RGB).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

import albumentations as A
import numpy as np

_KEYS = ("mean", "std", "scale", "low", "high")


def _per_band(values, name: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(f"normalize.{name} must be a number or a list of one number per band, got {values!r}")
    return array


def parse_scale(scale: Any) -> float | None:
    """``1/65535``-style scales: a number, or a string fraction ``"p/q"`` (YAML cannot divide)."""
    if scale is None:
        return None
    try:
        value = float(Fraction(str(scale).replace(" ", ""))) if isinstance(scale, str) else float(scale)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"normalize.scale must be a number or a fraction like 1/65535, got {scale!r}") from None
    if not value > 0:
        raise ValueError(f"normalize.scale must be positive, got {scale!r}")
    return value


class NormalizeBands(A.ImageOnlyTransform):
    """An image of any dtype and band count as float32: clipped to per-band [``low``, ``high``] and mapped to
    [0, 1], or multiplied by ``scale``; then ``(x - mean) / std`` per band when given (see the module)."""

    def __init__(self, mean: Sequence[float] | float | None = None, std: Sequence[float] | float | None = None,
                 scale: float | str | None = None, low: Sequence[float] | None = None,
                 high: Sequence[float] | None = None, p: float = 1.0):
        super().__init__(p=p)
        self.mean, self.std = _per_band(mean, "mean"), _per_band(std, "std")
        self.low, self.high = _per_band(low, "low"), _per_band(high, "high")
        self.scale = parse_scale(scale)
        if (self.mean is None) != (self.std is None):
            raise ValueError("normalize needs both mean and std, or neither")
        if self.std is not None and not (self.std > 0).all():
            raise ValueError(f"normalize.std must be positive, got {list(self.std)}")
        if (self.low is None) != (self.high is None):
            raise ValueError("normalize needs both low and high (per-band clipping values), or neither")
        if self.low is not None and not (self.high > self.low).all():
            raise ValueError(f"normalize.high must exceed low in every band, got low {list(self.low)}, "
                             f"high {list(self.high)}")
        if self.low is not None and self.scale is not None:
            raise ValueError("normalize: give scale or low/high, not both")
        if self.mean is None and self.scale is None and self.low is None:
            raise ValueError(f"normalize needs mean/std, scale or low/high; its keys are {', '.join(_KEYS)}")

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return _KEYS

    def bands(self) -> int | None:
        """The band count its per-band values fix (None when every value is one number for all bands)."""
        counts = {len(v) for v in (self.mean, self.std, self.low, self.high) if v is not None and len(v) > 1}
        return counts.pop() if len(counts) == 1 else None

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        x = img.astype(np.float64)
        if self.low is not None:
            x = (np.clip(x, self.low, self.high) - self.low) / (self.high - self.low)
        elif self.scale is not None:
            x = x * self.scale
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.astype(np.float32)


@dataclass(frozen=True)
class InputScaling:
    """What a pipeline's normalisation does to each band of a file's values ``x``:
    ``input = (clip(x, low, high) * scale - mean) / std`` (no clipping where ``low``/``high`` are None). Every
    normalisation segdense builds has this form, so one description serves the ONNX metadata and turning model
    input back into the file's units for pictures. Each array holds one value per band, or one for all bands.
    ``dtype``: the files' dtype when the normalisation implies one (``Normalize``: 8-bit), else None."""

    mean: np.ndarray
    std: np.ndarray
    scale: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    dtype: str | None = None

    def to_file_units(self, image) -> np.ndarray:
        """Model input (C, H, W) (tensor or array) back in the file's units as (H, W, C): float64, or the
        files' ``dtype`` (rounded) when known. Values the normalisation clipped stay clipped."""
        x = np.moveaxis(np.asarray(image.detach().cpu().float() if hasattr(image, "detach") else image,
                                   dtype=np.float64), 0, -1)
        x = (x * self.std + self.mean) / self.scale
        if self.dtype is None:
            return x
        info = np.iinfo(self.dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(self.dtype)

    def metadata(self) -> dict:
        """JSON-ready ``mean``, ``std``, ``scale``, ``low`` and ``high`` (lists; None for no clipping)."""
        def values(v):
            return None if v is None else [float(x) for x in np.atleast_1d(v)]

        return {"mean": values(self.mean), "std": values(self.std), "scale": values(self.scale),
                "low": values(self.low), "high": values(self.high)}


def input_scaling(step: A.BasicTransform | None) -> InputScaling | None:
    """The :class:`InputScaling` of a pipeline's normalisation step: albumentations' ``Normalize`` (its
    ``standard`` mode) or :class:`NormalizeBands`; the identity without a step (images given as they are); None
    for a step whose result depends on each image (``Normalize``'s per-image modes)."""
    one, zero = np.ones(1), np.zeros(1)
    if step is None:
        return InputScaling(mean=zero, std=one, scale=one)
    if isinstance(step, A.Normalize):
        if step.normalization != "standard":
            return None
        return InputScaling(mean=_per_band(step.mean, "mean"), std=_per_band(step.std, "std"),
                            scale=one / float(step.max_pixel_value),
                            dtype="uint8" if step.max_pixel_value == 255.0 else None)
    if not isinstance(step, NormalizeBands):
        return None
    mean = zero if step.mean is None else step.mean
    std = one if step.std is None else step.std
    if step.low is None:
        return InputScaling(mean=mean, std=std, scale=one * (step.scale or 1.0))
    # ((c - low) / (high - low) - m) / s  =  (c * k - (low * k + m)) / s  with  k = 1 / (high - low)
    k = 1.0 / (step.high - step.low)
    return InputScaling(mean=step.low * k + mean, std=std, scale=k, low=step.low, high=step.high)


def normalisation_problem(image: np.ndarray, step: A.BasicTransform | None) -> str | None:
    """Why ``step`` (the pipeline's normalisation) cannot turn ``image`` (H, W, C) into model input, or None.

    Albumentations' ``Normalize`` divides by ``max_pixel_value`` (255: 8-bit data), so it takes uint8 only: any
    other dtype would be silently mis-scaled. Per-band values must match the image's band count."""
    bands = image.shape[2]
    if isinstance(step, A.Normalize):
        if step.max_pixel_value == 255.0 and image.dtype != np.uint8:
            return (f"{image.dtype} image (values {_value_range(image)}) cannot be normalised by Normalize "
                    f"(max_pixel_value 255, for 8-bit data); set dataset.normalize to per-band mean/std in the "
                    f"file's units (python tools/check_dataset.py prints them) or a scale")
        wanted = max((len(np.atleast_1d(v)) for v in (step.mean, step.std) if v is not None), default=1)
    elif isinstance(step, NormalizeBands):
        wanted = step.bands() or 1
    else:
        return None
    if wanted > 1 and wanted != bands:
        return (f"image has {bands} band(s) but the normalisation gives values for {wanted}; set dataset.bands "
                "to choose the bands, or give dataset.normalize one value per band")
    return None


def _value_range(image: np.ndarray) -> str:
    if image.size == 0:
        return "none"
    return f"{image.min():g}..{image.max():g}"


def with_normalisation(spec: Sequence[Mapping[str, Any]], normalize: Mapping[str, Any] | None) -> list:
    """``spec`` with ``normalize`` (the dataset's) in place of its ``Normalize`` steps (appended when it has
    none); ``spec`` unchanged without it. Normalisation happens once: in the pipeline, as the dataset says."""
    if not normalize:
        return list(spec)
    step = {"type": "NormalizeBands", **dict(normalize)}
    items = [step if item.get("type") in ("Normalize", "NormalizeBands") else item for item in spec]
    return items if step in items else items + [step]
