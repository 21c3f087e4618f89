"""Augmentation pipelines built from plain data (a list of ``{"type": name, **kwargs}`` items).

``type`` is an albumentations class name (``RandomScale``, ``PadIfNeeded``, ``HorizontalFlip``, ``Normalize``...)
or a segdense transform from :data:`SEGDENSE_TRANSFORMS` (mmseg's ``CatMaxRandomCrop``, ``RandomResize``,
``KeepRatioResize``, ``PhotoMetricDistortion``). An item with a ``transforms``
list (``OneOf``, ``SomeOf``, ``Sequential``) has its children built the same way. The pipeline always ends by
converting to tensors, so YAML never needs a ``ToTensor`` item. Masks always use nearest interpolation.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import albumentations as A
import numpy as np
import torch

from ..readers import ImageReadError
from ..registry import unknown_name_message
from .mmseg_transforms import CatMaxRandomCrop, KeepRatioResize, PhotoMetricDistortion, RandomResize
from .normalisation import InputScaling, NormalizeBands, input_scaling, normalisation_problem, with_normalisation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


SEGDENSE_TRANSFORMS: dict[str, type] = {
    cls.__name__: cls for cls in (CatMaxRandomCrop, KeepRatioResize, NormalizeBands, PhotoMetricDistortion,
                                  RandomResize)
}
# Photometric transforms written for 8-bit RGB (colour spaces, uint8 lookup tables): refused on anything else.
RGB_ONLY = ("ColorJitter", "FancyPCA", "HueSaturationValue", "ISONoise", "PhotoMetricDistortion", "PlanckianJitter",
            "RGBShift", "ToGray", "ToSepia")
_NEAREST = 0  # cv2.INTER_NEAREST


def _build_one(item: Mapping[str, Any]) -> A.BasicTransform:
    if not isinstance(item, Mapping) or "type" not in item:
        raise ValueError(f"each augmentation item must be a mapping with a 'type' key, got {item!r}")
    kwargs = dict(item)
    name = kwargs.pop("type")
    cls = SEGDENSE_TRANSFORMS.get(name)
    if cls is None:
        cls = getattr(A, name, None)
        if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
            valid = sorted(SEGDENSE_TRANSFORMS) + sorted(
                n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform))
            raise ValueError(unknown_name_message("transform", name, valid))
    if kwargs.get("mask_interpolation", _NEAREST) != _NEAREST:
        raise ValueError(f"{name}: masks must use nearest interpolation (mask_interpolation=0), got "
                         f"{kwargs['mask_interpolation']}")
    if "transforms" in kwargs:
        kwargs["transforms"] = [_build_one(child) for child in kwargs["transforms"]]
    # albumentations only warns about unknown arguments (e.g. 1.x's value/mask_value); here they are errors.
    params = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"{name} has no argument(s) {', '.join(unknown)}; its arguments are: "
                             f"{', '.join(n for n in params if n not in ('args', 'kwargs'))}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot build transform {name} with arguments {kwargs}: {exc}") from None


def imagenet_scaling() -> InputScaling:
    """The :class:`InputScaling` of :func:`imagenet_normalise` (8-bit RGB, ImageNet's mean and std)."""
    return input_scaling(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))


def imagenet_normalise(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 (H, W, 3) to a float tensor (3, H, W) normalised with ImageNet mean/std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def _flatten(transforms) -> list:
    out = []
    for t in transforms:
        out.append(t)
        out.extend(_flatten(getattr(t, "transforms", None) or []))
    return out


def mask_tensor(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A mask as an int64 tensor in the targets' layout: (H, W) class indices, or a multilabel (H, W, C) mask with
    one band per class as (C, H, W)."""
    mask = torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask).long()
    return mask.permute(2, 0, 1).contiguous() if mask.dim() == 3 else mask



def input_problem(image: np.ndarray, transforms: Sequence[A.BasicTransform],
                  in_channels: int | None = None) -> str | None:
    """Why ``transforms`` cannot take ``image`` (H, W, C), or None: a band count other than ``in_channels``, a
    photometric transform made for 8-bit RGB on other data, or a normalisation that does not fit the dtype or
    band count (:func:`~segdense.data.normalisation.normalisation_problem`); all of them, in one line."""
    bands = image.shape[2] if image.ndim == 3 else 1
    problems = []
    if in_channels is not None and bands != in_channels:
        problems.append(f"image has {bands} band(s) but the model takes in_channels={in_channels}")
    for t in _flatten(transforms):
        name = type(t).__name__
        if name in RGB_ONLY and (bands != 3 or image.dtype != np.uint8):
            problems.append(f"{name} works on 8-bit RGB images only, but this image has {bands} band(s) of "
                            f"{image.dtype}; remove it from the augmentation pipeline")
        elif isinstance(t, (A.Normalize, NormalizeBands)):
            problems.append(normalisation_problem(image if image.ndim == 3 else image[..., None], t))
    return "; ".join(p for p in problems if p) or None


class SegmentationTransform:
    """Callable ``(image HWC, mask HW) -> (float tensor CHW, int64 tensor HW)`` around an albumentations
    pipeline. ``set_random_seed`` makes it reproducible (the loader calls it per worker). An image the pipeline
    cannot take (:func:`input_problem`; ``in_channels``: the band count the model takes, when known) raises
    :class:`~segdense.readers.ImageReadError` before anything runs."""

    def __init__(self, transforms: Sequence[A.BasicTransform], seed: int | None = None,
                 in_channels: int | None = None):
        self.pipeline = A.Compose(list(transforms), mask_interpolation=_NEAREST, seed=seed)
        self.in_channels = in_channels

    def set_random_seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # albumentations' OpenCV kernels need uint8 masks; labels live in [0, 255] so nothing is lost.
        mask = np.asarray(mask)
        if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values must lie in [0, 255] (255 = ignore), got {mask.min()}..{mask.max()}")
        problem = input_problem(np.asarray(image), self.pipeline.transforms, self.in_channels)
        if problem:
            raise ImageReadError("image", problem)
        out = self.pipeline(image=np.ascontiguousarray(image), mask=mask.astype(np.uint8, copy=False))
        image_out, mask_out = out["image"], out["mask"]
        if isinstance(image_out, np.ndarray):
            image_out = torch.from_numpy(np.ascontiguousarray(image_out)).permute(2, 0, 1)
        if isinstance(mask_out, np.ndarray):
            mask_out = torch.from_numpy(np.ascontiguousarray(mask_out))
        return image_out.float(), mask_tensor(mask_out)

    def lookup_table(self, dtype: np.dtype, bands: int) -> np.ndarray | None:
        """The pipeline as a table (bands, values) of float32: ``table[b, v]`` is what it makes of value ``v`` in band
        ``b`` of an unsigned 8- or 16-bit image, computed by running the pipeline once on an image that holds every
        value. None for other dtypes, for images the pipeline refuses (their dtype or band count), and for pipelines
        with a step that is not a fixed per-band map of each value (anything but ``Normalize`` in its ``standard``
        mode and :class:`NormalizeBands`), where a pixel's result may depend on more than its own value."""
        dtype = np.dtype(dtype)
        steps = _flatten(self.pipeline.transforms)
        pointwise = all(t.p == 1 and (isinstance(t, NormalizeBands) or (
            isinstance(t, A.Normalize) and t.normalization == "standard")) for t in steps)
        if dtype not in (np.uint8, np.uint16) or not pointwise:
            return None
        values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
        ramp = np.ascontiguousarray(np.repeat(values[:, None, None], bands, axis=2))  # (values, 1, bands)
        try:
            table, _ = self(ramp, np.zeros(ramp.shape[:2], np.uint8))
        except ImageReadError:
            return None
        return np.ascontiguousarray(table[:, :, 0].numpy())

    @property
    def input_scaling(self) -> InputScaling | None:
        """What the pipeline's normalisation does to the file's values (:class:`InputScaling`; None when it
        depends on each image), to describe the model's input and to turn it back into pictures."""
        steps = [t for t in _flatten(self.pipeline.transforms) if isinstance(t, (A.Normalize, NormalizeBands))]
        return input_scaling(steps[0] if steps else None) if len(steps) <= 1 else None

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.pipeline.transforms})"


def build_transforms(spec: Sequence[Mapping[str, Any]], seed: int | None = None,
                     normalize: Mapping[str, Any] | None = None,
                     in_channels: int | None = None) -> SegmentationTransform:
    """Build a pipeline from a list of ``{"type": name, **kwargs}`` items (e.g. ``cfg.augmentation.train``);
    ``normalize`` (the dataset's ``normalize`` block) takes the place of its ``Normalize`` step."""
    if isinstance(spec, Mapping) or isinstance(spec, str):
        raise ValueError(f"an augmentation pipeline is a list of items, got {type(spec).__name__}")
    items = with_normalisation(spec, normalize)
    return SegmentationTransform([_build_one(item) for item in items], seed=seed, in_channels=in_channels)
