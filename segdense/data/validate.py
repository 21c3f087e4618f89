"""Dataset validation: unreadable files, size mismatches, out-of-range labels, unpaired files, class frequency."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import SegmentationDataset
from .io import IGNORE_INDEX, DatasetFileError
from .statistics import ClassStatistics


@dataclass
class DatasetReport:
    """What :func:`validate_dataset` found. ``errors`` are human-readable lines naming the files at fault."""

    num_samples: int
    num_checked: int
    class_names: list[str]
    class_pixels: np.ndarray  # pixel count per class
    ignored_pixels: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def class_frequency(self) -> dict[str, float]:
        """Fraction of labelled (non-ignored) pixels per class name."""
        total = max(int(self.class_pixels.sum()), 1)
        return {name: int(count) / total for name, count in zip(self.class_names, self.class_pixels)}

    def format(self) -> str:
        """The report as text: a summary line, the errors, and the class frequency table."""
        lines = [f"checked {self.num_checked} of {self.num_samples} samples: "
                 + ("OK" if self.ok else f"{len(self.errors)} error(s)")]
        lines += [f"  ERROR {error}" for error in self.errors]
        width = max([len(name) for name in self.class_names] + [5])
        lines.append(f"{'id':>3}  {'class':<{width}}  {'pixels':>12}  {'share':>7}")
        for index, (name, frac) in enumerate(self.class_frequency.items()):
            lines.append(f"{index:>3}  {name:<{width}}  {int(self.class_pixels[index]):>12}  {frac:>7.2%}")
        total = int(self.class_pixels.sum()) + self.ignored_pixels
        lines.append(f"{255:>3}  {'ignore':<{width}}  {self.ignored_pixels:>12}  "
                     f"{self.ignored_pixels / max(total, 1):>7.2%} of all pixels")
        return "\n".join(lines)


def sample_indices(count: int, sample: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``sample`` samples out of ``count`` drawn with ``seed`` (all of them for None)."""
    if sample is None or sample >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=int(sample), replace=False))


def validate_dataset(dataset: SegmentationDataset, num_classes: int | None = None, sample: int | None = 64,
                     seed: int = 0) -> DatasetReport:
    """Check a dataset's raw samples (``sample`` of them drawn at random with ``seed``, or all with ``None``).

    Reports by path: files that cannot be decoded, image/mask size mismatches, mask values outside
    ``[0, num_classes)`` and 255 (with the values), and files without a partner (always, whatever ``sample``).
    """
    num_classes = dataset.num_classes if num_classes is None else int(num_classes)
    names = list(dataset.class_names)[:num_classes]
    names += [f"class{i}" for i in range(len(names), num_classes)]
    count = len(dataset)
    indices = sample_indices(count, sample, seed)
    report = DatasetReport(count, len(indices), names, np.zeros(num_classes, dtype=np.int64))
    stats = ClassStatistics.empty(names)
    for path, problem in getattr(dataset, "unpaired", []):
        report.errors.append(f"{path}: {problem}")
    for index in indices:
        image_ref, mask_ref = dataset.describe(int(index))
        image = mask = None
        try:
            image = dataset.load_image(int(index))
        except DatasetFileError as exc:
            report.errors.append(str(exc))
        try:
            mask = dataset.load_mask(int(index))
        except DatasetFileError as exc:
            report.errors.append(str(exc))
        if mask is None:
            continue
        if image is not None and image.shape[:2] != mask.shape[:2]:
            report.errors.append(f"{image_ref} is {image.shape[0]}x{image.shape[1]} but its mask {mask_ref} is "
                                 f"{mask.shape[0]}x{mask.shape[1]} (height x width)")
        values = np.unique(mask)
        top = 2 if mask.ndim == 3 else num_classes  # multilabel masks: 0/1 per class band
        bad = [int(v) for v in values if not (0 <= v < top or v == IGNORE_INDEX)]
        if bad:
            report.errors.append(f"{mask_ref}: label values {bad} outside [0, {num_classes}) and {IGNORE_INDEX}")
        stats.add(mask)
    report.class_pixels, report.ignored_pixels = stats.pixels, stats.ignored_pixels
    return report
