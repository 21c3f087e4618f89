"""The base class every segdense dataset derives from."""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from segdense.errors import ConfigError, MissingFileError

from ..readers import ImageReadError
from .io import IGNORE_INDEX, DatasetFileError, read_image, read_mask
from .normalisation import InputScaling
from .transforms import imagenet_normalise, imagenet_scaling, mask_tensor

Transform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Untransformed sample as tensors: image float (3, H, W) normalised with ImageNet mean/std, mask int64.
    Only 8-bit RGB images have a normalisation without a transform; others need one (``dataset.normalize``)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageReadError("image", f"{image.shape[2] if image.ndim == 3 else 1}-band {image.dtype} image has "
                             "no default normalisation (ImageNet's is for 8-bit RGB); give the dataset a transform "
                             "with dataset.normalize")
    return imagenet_normalise(image), mask_tensor(mask)


class SegmentationDataset(Dataset):
    """A semantic-segmentation dataset: ``dataset[i] -> (image, mask)`` after ``transform``.

    ``image`` is a float tensor (3, H, W), ``mask`` an int64 tensor (H, W) with ``ignore_index`` (255) on pixels
    that carry no label. Without a transform the image is only normalised with ImageNet mean/std.

    Subclasses set ``class_names``, ``palette`` (and ``named_class_weights`` where a dataset has published
    weights) and implement ``__len__``, ``load_image`` and ``load_mask``
    (the raw, untransformed data); path-based datasets also fill ``files`` with (image path, mask path) pairs and
    ``unpaired`` with the files that have no partner.
    """

    ignore_index: int = IGNORE_INDEX
    mask_task: str | None = None  # the task its masks are made for (segdense.tasks), where only one fits
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    # Published per-class loss weights by name (``loss.class_weight=<name>``), e.g. CamVid's ``segnet``.
    named_class_weights: Mapping[str, Sequence[float]] = MappingProxyType({})
    # Which bands of every image, in which order (None: all), and how .npy/TIFF arrays are laid out (None: as
    # the file says, or detected from an unambiguous shape).
    bands: Sequence[int] | None = None
    layout: str | None = None

    def __init__(self, transform: Transform | None = None):
        self.transform = transform
        self.files: list[tuple[Path, Path]] = []
        self.unpaired: list[tuple[Path, str]] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def input_scaling(self) -> InputScaling | None:
        """How the samples' image tensors come from the files' values: the transform's normalisation, or
        ImageNet's (:func:`to_tensors`) without a transform; None when unknown (a transform of another kind)."""
        if self.transform is None:
            return imagenet_scaling()
        return getattr(self.transform, "input_scaling", None)

    def load_image(self, index: int) -> np.ndarray:
        """Raw image ``index`` as (H, W, C) in the file's own dtype (8-bit PNG/JPEG: RGB uint8), ``bands`` only."""
        return read_image(self.files[index][0], bands=self.bands, layout=self.layout)

    def load_mask(self, index: int) -> np.ndarray:
        """Raw mask ``index`` as int64 (H, W) with train labels and 255 = ignore."""
        return read_mask(self.files[index][1])

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed sample: (image (H, W, C), int64 (H, W) mask)."""
        return self.load_image(index), self.load_mask(index)

    def describe(self, index: int) -> tuple[str, str]:
        """Where sample ``index`` comes from, as (image, mask) for messages."""
        image, mask = self.files[index]
        return str(image), str(mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        image, mask = self.load_raw(index)
        try:
            if self.transform is None:
                return to_tensors(image, mask)
            return self.transform(image, mask)
        except ImageReadError as exc:  # the pipeline cannot take this image: name its file
            raise DatasetFileError(self.describe(index)[0], exc.problem) from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.num_classes} classes)"


def layout_error(dataset: str, root: str | Path, problem: str, layout: str) -> MissingFileError:
    """One error for a missing or wrongly laid out dataset root, showing the layout expected."""
    return MissingFileError(f"{dataset} root {str(root)!r}: {problem}.\nExpected layout:\n{layout.rstrip()}")


def read_split_list(path: Path, dataset: str, root: Path, layout: str) -> list[str]:
    """Non-empty stripped lines of a split list file (the first column of each line)."""
    if not path.is_file():
        raise layout_error(dataset, root, f"split list {str(path)!r} does not exist", layout)
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def check_split(split: str, valid: Sequence[str], dataset: str) -> None:
    if split not in valid:
        raise ConfigError(f"unknown {dataset} split {split!r}; valid splits: {', '.join(valid)}")
