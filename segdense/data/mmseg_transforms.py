"""mmsegmentation's training transforms, reproduced step for step: keep-ratio (random) resize to a target scale,
the category-balanced random crop, and the photometric distortion.

Each is an albumentations transform, so it sits in a ``conf/augmentation`` list like any other item
(``{type: RandomResize, scale: [2048, 512], ratio_range: [0.5, 2.0]}``). Their random draws come from
albumentations' seeded generators, their arithmetic is mmseg's (``mmcv.imrescale``'s rounding, OpenCV's bilinear
and nearest kernels, uint8 truncation after each photometric step).
"""
from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np

from .io import IGNORE_INDEX


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """(height, width) after mmcv's keep-ratio rescale to ``scale`` (its long and short edge limits, in any
    order): the largest factor with long edge <= max(scale) and short edge <= min(scale), sizes rounded half up."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomResize(A.DualTransform):
    """mmseg's ``RandomResize(scale, ratio_range, keep_ratio=True)``: a ratio r drawn uniformly from
    ``ratio_range`` gives the target ``(int(scale[0] * r), int(scale[1] * r))``, and the image is rescaled, aspect
    kept, to fit it (:func:`rescale_size`). ``ratio_range=None`` resizes to ``scale`` itself (mmseg's test-time
    ``Resize(scale, keep_ratio=True)``). With ``keep_ratio=False`` the image is resized to exactly the target
    (width, height) = ``scale``. Images bilinear, masks nearest."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float] | None = (0.5, 2.0), keep_ratio: bool = True,
                 p: float = 1.0):
        super().__init__(p=p)
        if len(scale) != 2 or min(scale) <= 0:
            raise ValueError(f"scale must be two positive sizes, e.g. [2048, 512], got {list(scale)}")
        if ratio_range is not None and (len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]):
            raise ValueError(f"ratio_range must be [low, high] with 0 < low <= high, got {list(ratio_range)}")
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = None if ratio_range is None else (float(ratio_range[0]), float(ratio_range[1]))
        self.keep_ratio = bool(keep_ratio)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range", "keep_ratio")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        scale = self.scale
        if self.ratio_range is not None:
            low, high = self.ratio_range
            ratio = self.py_random.random() * (high - low) + low
            scale = (int(scale[0] * ratio), int(scale[1] * ratio))
        height, width = params["shape"][:2]
        size = rescale_size(height, width, scale) if self.keep_ratio else (scale[1], scale[0])
        return {"size": size}

    def apply(self, img: np.ndarray, size: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


class KeepRatioResize(RandomResize):
    """mmseg's test-time ``Resize(scale, keep_ratio=True)``: :class:`RandomResize` without the random ratio."""

    def __init__(self, scale: Sequence[int], p: float = 1.0):
        super().__init__(scale, ratio_range=None, keep_ratio=True, p=p)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale",)


class CatMaxRandomCrop(A.DualTransform):
    """mmseg's ``RandomCrop(crop_size, cat_max_ratio)``: a random crop that avoids crops dominated by one class.

    As in mmseg, a crop is drawn, then up to ``max_tries`` times: if its most frequent label (``ignore_index``
    left out) covers less than ``cat_max_ratio`` of its labelled pixels and it holds more than one label, it is
    taken, else a new one is drawn (so the crop taken after ``max_tries`` failures is the last drawn, unchecked).
    ``cat_max_ratio=1`` is a plain random crop. An input smaller than the crop is refused (put ``PadIfNeeded``
    first) unless ``allow_smaller``: then, as mmseg does, a side shorter than the crop is kept whole, and a pad
    after the pipeline brings the sample to the crop size.
    """

    def __init__(self, height: int, width: int, cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 max_tries: int = 10, allow_smaller: bool = False, p: float = 1.0):
        super().__init__(p=p)
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must lie in (0, 1], got {cat_max_ratio}")
        self.height, self.width = int(height), int(width)
        self.cat_max_ratio, self.ignore_index, self.max_tries = float(cat_max_ratio), int(ignore_index), int(max_tries)
        self.allow_smaller = bool(allow_smaller)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "max_tries", "allow_smaller")

    @property
    def targets_as_params(self) -> list[str]:
        return ["image", "mask"]

    def _draw(self, height: int, width: int) -> tuple[int, int]:
        top = int(self.py_random.randint(0, max(height - self.height, 0)))
        return top, int(self.py_random.randint(0, max(width - self.width, 0)))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        if (height < self.height or width < self.width) and not self.allow_smaller:
            raise ValueError(f"CatMaxRandomCrop of {self.height}x{self.width} needs an input at least that large, got "
                             f"{height}x{width}; put PadIfNeeded before it in the pipeline (or allow_smaller: true "
                             "and pad after it, as mmseg does)")
        mask = data.get("mask")
        top, left = self._draw(height, width)
        if mask is not None and self.cat_max_ratio < 1:
            for _ in range(self.max_tries):
                crop = mask[top:top + self.height, left:left + self.width]
                _, counts = np.unique(crop[crop != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = self._draw(height, width)
        return {"top": top, "left": left}

    def apply(self, img: np.ndarray, top: int = 0, left: int = 0, **params: Any) -> np.ndarray:
        return img[top:top + self.height, left:left + self.width]

    def apply_to_mask(self, mask: np.ndarray, top: int = 0, left: int = 0, **params: Any) -> np.ndarray:
        return mask[top:top + self.height, left:left + self.width]


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``PhotoMetricDistortion.convert``: ``values * alpha + beta`` in float32, clipped to [0, 255] and
    truncated to uint8."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg's ``PhotoMetricDistortion`` on an RGB uint8 image, each step applied with probability 0.5:
    brightness (add a delta from U(-``brightness_delta``, ``brightness_delta``)); contrast (multiply by
    U(``contrast_range``)), either second or last, chosen at random; saturation (multiply HSV's S by
    U(``saturation_range``)); hue (add an integer from [-``hue_delta``, ``hue_delta``) to OpenCV's H, modulo 180).
    Each step truncates to uint8, as mmseg's does. The image stays RGB: OpenCV's RGB<->HSV equals mmseg's BGR<->HSV
    on the same pixels."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18, p: float = 1.0):
        super().__init__(p=p)
        self.brightness_delta, self.hue_delta = int(brightness_delta), int(hue_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")

    def get_params(self) -> dict[str, Any]:
        """The draws, in mmseg's order; a step left out has ``None``."""
        rnd = self.py_random
        brightness = rnd.uniform(-self.brightness_delta, self.brightness_delta) if rnd.random() < 0.5 else None
        contrast_first = rnd.random() < 0.5
        contrast = rnd.uniform(*self.contrast_range) if rnd.random() < 0.5 else None
        saturation = rnd.uniform(*self.saturation_range) if rnd.random() < 0.5 else None
        hue = rnd.randint(-self.hue_delta, self.hue_delta - 1) if rnd.random() < 0.5 else None
        return {"brightness": brightness, "contrast_first": contrast_first, "contrast": contrast,
                "saturation": saturation, "hue": hue}

    def apply(self, img: np.ndarray, brightness: float | None = None, contrast_first: bool = True,
              contrast: float | None = None, saturation: float | None = None, hue: int | None = None,
              **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise ValueError(f"PhotoMetricDistortion works on uint8 images (put it before Normalize), got {img.dtype}")
        if brightness is not None:
            img = _convert(img, beta=brightness)
        if contrast_first and contrast is not None:
            img = _convert(img, alpha=contrast)
        if saturation is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=saturation)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            img = _convert(img, alpha=contrast)
        return img
