"""Per-band statistics of a dataset's images in one streaming pass, and what the doctor finds in them: 16-bit
files whose values all sit under 256, bands constant over the dataset, NaN and nodata values, and images whose
band count differs from the rest. :meth:`BandStatistics.config_lines` prints ``dataset.normalize`` to paste."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..readers import ImageReadError, read_image, select_bands

PERCENTILES = (2.0, 98.0)
SAMPLE_PER_IMAGE = 4096  # pixels kept per image for the percentiles (mean and std use every pixel)


@dataclass
class BandStatistics:
    """Running sums per band (float64), the band counts seen, and the files worth a word."""

    bands: int | None = None
    count: np.ndarray | None = None
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    samples: list = field(default_factory=list)
    band_counts: Counter = field(default_factory=Counter)
    other_band_count: list = field(default_factory=list)  # (file, its band count)
    under_256: list = field(default_factory=list)  # 16-bit files whose values all sit under 256
    with_nan: list = field(default_factory=list)  # (file, NaN pixels)
    with_nodata: list = field(default_factory=list)  # (file, nodata value, pixels holding it)
    unreadable: list = field(default_factory=list)  # files that could not be read, left out of the statistics
    images: int = 0

    def add(self, image: np.ndarray, source: str, nodata: float | None = None, seed: int = 0) -> None:
        bands = image.shape[2]
        self.band_counts[bands] += 1
        if self.bands is None:
            self._start(bands)
        if bands != self.bands:
            self.other_band_count.append((source, bands))
            return
        self.images += 1
        if image.dtype == np.uint16 and image.size and image.max() < 256:
            self.under_256.append(source)
        pixels = image.reshape(-1, bands).astype(np.float64)
        finite = np.isfinite(pixels)
        if not finite.all():
            self.with_nan.append((source, int((~finite).any(axis=1).sum())))
        if nodata is not None:
            hits = int((image.reshape(-1, bands) == nodata).all(axis=1).sum())
            if hits:
                self.with_nodata.append((source, nodata, hits))
            finite &= (image.reshape(-1, bands) != nodata)
        values = np.where(finite, pixels, 0.0)
        self.count += finite.sum(axis=0)
        self.total += values.sum(axis=0)
        self.squares += (values ** 2).sum(axis=0)
        self.low = np.minimum(self.low, np.where(finite, pixels, np.inf).min(axis=0))
        self.high = np.maximum(self.high, np.where(finite, pixels, -np.inf).max(axis=0))
        rng = np.random.default_rng(seed)
        keep = rng.choice(len(pixels), size=min(SAMPLE_PER_IMAGE, len(pixels)), replace=False)
        self.samples.append(np.where(finite[keep], pixels[keep], np.nan))

    def _start(self, bands: int) -> None:
        self.bands = bands
        self.count, self.total, self.squares = (np.zeros(bands) for _ in range(3))
        self.low, self.high = np.full(bands, np.inf), np.full(bands, -np.inf)

    @property
    def mean(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.squares / np.maximum(self.count, 1) - self.mean ** 2, 0.0))

    def percentiles(self) -> np.ndarray:
        """(len(PERCENTILES), bands): the percentiles of every band, over the kept pixels."""
        return np.nanpercentile(np.concatenate(self.samples), PERCENTILES, axis=0)

    def constant_bands(self) -> list[int]:
        return [b for b in range(self.bands or 0) if self.count[b] and self.low[b] == self.high[b]]

    def config_lines(self) -> list[str]:
        """The ``dataset.normalize`` settings to paste: per-band mean/std, or percentile clipping."""
        def values(a):
            return "[" + ", ".join(f"{v:.6g}" for v in a) + "]"
        low, high = self.percentiles()
        return [f"dataset.normalize: {{mean: {values(self.mean)}, std: {values(self.std)}}}",
                f"  or, clipped to the {PERCENTILES[0]:g}th..{PERCENTILES[1]:g}th percentiles: "
                f"dataset.normalize: {{low: {values(low)}, high: {values(high)}}}"]

    def findings(self) -> list[tuple[str, str, str]]:
        """(kind, what was seen, the fix) for everything worth a word."""
        out = []
        if self.unreadable:
            out.append(("unreadable", f"{len(self.unreadable)} file(s) could not be read and are left out of the "
                        f"statistics: {', '.join(self.unreadable[:5])}{' ...' if len(self.unreadable) > 5 else ''}",
                        "replace or remove them (the checks above say why each one failed)"))
        if self.other_band_count:
            files = ", ".join(f"{f} ({b})" for f, b in self.other_band_count[:3])
            out.append(("band_count", f"{len(self.other_band_count)} image(s) have another band count than the "
                        f"first ({self.bands}): {files}", "give every image the same bands, or pick them with "
                        "dataset.bands"))
        if self.under_256:
            out.append(("sixteen_bit_under_256", f"{len(self.under_256)} 16-bit file(s) hold only values under 256, "
                        f"e.g. {self.under_256[0]}", "8-bit data stored as 16 bits: normalise with the values it "
                        "holds (the mean/std below), not a 1/65535 scale"))
        for b in self.constant_bands():
            out.append(("constant_band", f"band {b} is constant ({self.low[b]:g}) over the {self.images} image(s) "
                        "read", "leave it out with dataset.bands (it carries no information, and its std is 0)"))
        if self.with_nan:
            out.append(("nan", f"{len(self.with_nan)} file(s) hold NaN values, e.g. {self.with_nan[0][0]} "
                        f"({self.with_nan[0][1]} pixels)", "replace NaN by a value (or mark it ignore in the "
                        "mask): NaN reaches the loss as NaN"))
        if self.with_nodata:
            f, value, n = self.with_nodata[0]
            out.append(("nodata", f"{len(self.with_nodata)} file(s) hold their nodata value, e.g. {f} "
                        f"({n} pixels of {value:g})", "mark those pixels ignore (255) in the masks; the statistics "
                        "above leave them out"))
        return out


def band_statistics(dataset, indices, seed: int = 0) -> BandStatistics:
    """Read the images ``indices`` of ``dataset`` once (with its ``bands`` and ``layout``) into a
    :class:`BandStatistics`; files are read with their metadata, so GeoTIFF/TIFF nodata values are known."""
    stats = BandStatistics()
    for index in indices:
        files = getattr(dataset, "files", None)
        path = files[int(index)][0] if files else dataset.describe(int(index))[0]
        try:
            if files:
                image, meta = read_image(path, layout=getattr(dataset, "layout", None))
                image, nodata = select_bands(image, getattr(dataset, "bands", None), path), meta.nodata
            else:
                image, nodata = dataset.load_image(int(index)), None
        except ImageReadError:
            stats.unreadable.append(str(path))
            continue
        stats.add(image, str(path), nodata, seed=seed + int(index))
    return stats
