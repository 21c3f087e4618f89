"""Datasets, augmentation pipelines, data loaders and dataset validation.

Importing this package imports albumentations and Pillow (never imported by ``segdense`` itself).
"""
import os

# albumentations asks the network for its latest version on import (up to 2 s, a warning offline).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from .ade20k import ADE20K  # noqa: E402
from .base import SegmentationDataset
from .camvid import CamVid
from .cityscapes import Cityscapes, label_ids_to_train_ids
from .folder import FolderDataset
from .io import IGNORE_INDEX, DatasetFileError, read_image, read_mask
from .loader import build_dataloader, infinite_batches, pad_collate, resolve_num_workers
from .registry import build_dataset, list_datasets
from .scenes import ScenesDataset
from .synthetic import SyntheticShapes
from .synthetic_hard import SyntheticHard
from .transforms import CatMaxRandomCrop, build_transforms
from .validate import DatasetReport, validate_dataset
from .voc import VOCSegmentation

__all__ = [
    "ADE20K", "IGNORE_INDEX", "CamVid", "CatMaxRandomCrop", "Cityscapes", "DatasetFileError", "DatasetReport",
    "FolderDataset", "ScenesDataset", "SegmentationDataset", "SyntheticHard", "SyntheticShapes", "VOCSegmentation", "build_dataloader", "build_dataset",
    "resolve_num_workers",
    "build_transforms", "infinite_batches", "label_ids_to_train_ids", "list_datasets", "pad_collate", "read_image",
    "read_mask", "validate_dataset",
]
