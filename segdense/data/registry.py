"""Build any dataset by name: ``build_dataset("voc", split="val", root=...)``."""
from __future__ import annotations

from typing import Any

from ..registry import Registry
from .ade20k import ADE20K
from .base import SegmentationDataset, Transform
from .camvid import CamVid
from .cityscapes import Cityscapes
from .folder import FolderDataset
from .scenes import ScenesDataset
from .synthetic import SyntheticBinary, SyntheticMultilabel, SyntheticShapes
from .synthetic_hard import SyntheticHard
from .voc import VOCSegmentation


def _voc_aug(split: str = "trainaug", **kwargs: Any) -> VOCSegmentation:
    return VOCSegmentation(split=split, **kwargs)


DATASETS = Registry("dataset")
DATASETS.register(SyntheticShapes, "synthetic")
DATASETS.register(SyntheticHard, "synthetic_hard")
DATASETS.register(SyntheticBinary, "synthetic_binary")
DATASETS.register(SyntheticMultilabel, "synthetic_multilabel")
DATASETS.register(VOCSegmentation, "voc")
DATASETS.register(_voc_aug, "voc_aug", kwargs_to=VOCSegmentation)  # VOC 2012 trained on SBD's trainaug split
DATASETS.register(Cityscapes, "cityscapes")
DATASETS.register(FolderDataset, "folder")
DATASETS.register(ScenesDataset, "scenes")
DATASETS.register(CamVid, "camvid")
DATASETS.register(ADE20K, "ade20k")


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return DATASETS.names()


def build_dataset(name: str, split: str, transform: Transform | None = None, **kwargs: Any) -> SegmentationDataset:
    """The dataset registered as ``name`` for ``split``, with the constructor's keyword arguments (e.g. ``root``).

    ``train_split``/``val_split`` keys (from a Hydra ``dataset:`` block) are ignored, so the trainer can call
    ``build_dataset(split=cfg.dataset.train_split, **cfg.dataset)``; so is ``normalize``, which belongs to the
    transform (``build_transforms(..., normalize=...)``).
    """
    builder = DATASETS.get(name)
    for key in ("train_split", "val_split", "normalize"):
        kwargs.pop(key, None)
    try:
        return builder(split=split, transform=transform, **kwargs)
    except TypeError as exc:
        raise TypeError(f"dataset {name!r}: {exc}") from None
