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
    ``other_pixels`` only."""

    class_names: list[str]
    num_images: int
    pixels: np.ndarray          # labelled pixels per class
    images: np.ndarray          # images in which each class occurs
    context_pixels: np.ndarray  # labelled pixels of the images in which each class occurs
    ignored_pixels: int = 0
    other_pixels: int = 0

    @classmethod
    def empty(cls, class_names: Sequence[str]) -> "ClassStatistics":
        n = len(class_names)
        zeros = lambda: np.zeros(n, dtype=np.int64)  # noqa: E731
        return cls(list(class_names), 0, zeros(), zeros(), zeros())

    def add(self, mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> None:
        """Count one mask (class indices, ``ignore_index`` for unlabelled pixels)."""
        n = len(self.class_names)
        values, counts = np.unique(np.asarray(mask), return_counts=True)
        inside = (values >= 0) & (values < n)
        labelled = int(counts[inside].sum())
        self.pixels[values[inside]] += counts[inside]
        self.images[values[inside]] += 1
        self.context_pixels[values[inside]] += labelled
        self.ignored_pixels += int(counts[values == ignore_index].sum())
        self.other_pixels += int(counts[~inside & (values != ignore_index)].sum())
        self.num_images += 1

    @property
    def pixel_frequency(self) -> np.ndarray:
        """Share of the labelled pixels per class."""
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
