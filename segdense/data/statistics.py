"""Per-class label statistics of a dataset split: pixel and image frequencies, and class weights from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from segdense.losses.class_weights import median_frequency_weights

from .io import IGNORE_INDEX, DatasetFileError


@dataclass
class ClassStatistics:
    """Counts over the masks added with :meth:`add`. Values outside ``[0, C)`` and ``ignore_index`` are counted in
    ``other_pixels`` only. Multilabel masks ((H, W, C) of 0/1 and ``ignore_index``) count, per class, the pixels
    labelled 1 in ``pixels`` and the pixels not ignored in ``band_pixels``; ignored and other values count per
    pixel and class."""

    class_names: list[str]
    num_images: int
    pixels: np.ndarray          # labelled pixels per class
    images: np.ndarray          # images in which each class occurs
    context_pixels: np.ndarray  # labelled pixels of the images in which each class occurs
    ignored_pixels: int = 0
    other_pixels: int = 0
    band_pixels: np.ndarray | None = None  # multilabel masks: the labelled (not ignored) pixels of each class

    @classmethod
    def empty(cls, class_names: Sequence[str]) -> "ClassStatistics":
        n = len(class_names)
        zeros = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
        return cls(list(class_names), 0, zeros(), zeros(), zeros())

    def add(self, mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> None:
        """Count one mask (class indices, ``ignore_index`` for unlabelled pixels; or multilabel (H, W, C))."""
        n = len(self.class_names)
        if np.ndim(mask) == 3:
            self._add_multilabel(np.asarray(mask), ignore_index)
            return
        values, counts = np.unique(np.asarray(mask), return_counts=True)
        inside = (values >= 0) & (values < n)
        labelled = int(counts[inside].sum())
        self.pixels[values[inside]] += counts[inside]
        self.images[values[inside]] += 1
        self.context_pixels[values[inside]] += labelled
        self.ignored_pixels += int(counts[values == ignore_index].sum())
        self.other_pixels += int(counts[~inside & (values != ignore_index)].sum())
        self.num_images += 1

    def _add_multilabel(self, mask: np.ndarray, ignore_index: int) -> None:
        if mask.shape[-1] != len(self.class_names):
            raise ValueError(f"a multilabel mask of {mask.shape[-1]} bands for {len(self.class_names)} classes")
        if self.band_pixels is None:
            self.band_pixels = np.zeros(len(self.class_names), dtype=np.int64)
        bands = mask.reshape(-1, mask.shape[-1])
        positive = (bands == 1).sum(axis=0)
        labelled = (bands != ignore_index).sum(axis=0)
        self.pixels += positive
        self.band_pixels += labelled
        self.images += positive > 0
        self.context_pixels += np.where(positive > 0, labelled, 0)
        self.ignored_pixels += int((bands == ignore_index).sum())
        self.other_pixels += int((~np.isin(bands, (0, 1, ignore_index))).sum())
        self.num_images += 1

    @property
    def pixel_frequency(self) -> np.ndarray:
        """Share of the labelled pixels per class (multilabel: of the pixels labelled in the class's band, the share
        labelled 1)."""
        if self.band_pixels is not None:
            return self.pixels / np.maximum(self.band_pixels, 1)
        return self.pixels / max(int(self.pixels.sum()), 1)

    @property
    def image_frequency(self) -> np.ndarray:
        """Share of the images in which each class occurs."""
        return self.images / max(self.num_images, 1)

    def missing_classes(self) -> list[str]:
        """Names of the classes with no pixel."""
        return [name for name, count in zip(self.class_names, self.pixels) if count == 0]

    def class_weights(self) -> list[float]:
        """Clipped median-frequency weights (:func:`segdense.losses.median_frequency_weights`)."""
        return median_frequency_weights(self.pixels, self.context_pixels)


def class_statistics(dataset, indices: Iterable[int] | None = None,
                     on_error: Callable[[int, Exception], None] | None = None) -> ClassStatistics:
    """Statistics of the raw masks of ``dataset`` (all samples, or ``indices``). A mask that cannot be read raises,
    unless ``on_error(index, exception)`` is given to take it."""
    stats = ClassStatistics.empty(dataset.class_names)
    for index in range(len(dataset)) if indices is None else indices:
        try:
            mask = dataset.load_mask(int(index))
        except DatasetFileError as exc:
            if on_error is None:
                raise
            on_error(int(index), exc)
            continue
        stats.add(mask, getattr(dataset, "ignore_index", IGNORE_INDEX))
    return stats
