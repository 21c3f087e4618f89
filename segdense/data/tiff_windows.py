"""Reading rectangular windows of a TIFF without reading the whole image: the tiles or strips a window touches are
read and decoded, nothing else. A TIFF whose layout defeats this (one compressed strip for the whole image, bands
stored as separate planes) is still read, and :attr:`TiffWindows.read_note` says how much every window reads."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import tifffile

from segdense.errors import UserError

logger = logging.getLogger("segdense.data")
LARGE_SEGMENT_BYTES = 256 * 2**20  # a compressed segment above this is worth a warning: every window decodes it


class TiffWindowError(UserError):
    """A TIFF that cannot be read as an image of (height, width[, bands])."""


class TiffWindows:
    """The first page of a TIFF as an image of ``(height, width, bands)`` read by window: ``read(y0, y1, x0, x1)``.

    ``segment_shape`` is the (rows, columns) of one stored tile or strip; a window reads every segment it touches.
    Pages stored as separate band planes are read whole once (:attr:`read_note` says so and how many bytes)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._tiff = tifffile.TiffFile(self.path)
        except (OSError, tifffile.TiffFileError, ValueError) as e:
            raise TiffWindowError(f"{self.path} could not be read as a TIFF ({e})") from None
        self.page = self._tiff.pages.first
        separate, depth, height, width, contig = self.page.shaped
        if depth != 1:
            raise TiffWindowError(f"{self.path} holds a volume of depth {depth}; expected a 2-D image (H, W[, bands])")
        self.height, self.width, self.bands = int(height), int(width), int(separate * contig)
        self.dtype = np.dtype(self.page.dtype)
        self.segment_shape = ((self.page.tilelength, self.page.tilewidth) if self.page.is_tiled
                              else (min(self.page.rowsperstrip, self.height), self.width))
        self._whole: np.ndarray | None = None
        # uncompressed whole-byte samples: a window's rows are read straight from the file, whatever the segments
        self._raw = self.page.compression == 1 and self.page.bitspersample % 8 == 0 and self.page.fillorder == 1
        self.read_note = self._layout_note(separate)
        if self.read_note:
            logger.warning("%s", self.read_note)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.bands

    def _layout_note(self, separate: int) -> str | None:
        pixel = self.bands * self.dtype.itemsize
        if separate > 1:
            return (f"{self.path}: bands stored as {separate} separate planes; the whole image "
                    f"({self.height * self.width * pixel / 1e6:.0f} MB) is read into memory once")
        rows, cols = self.segment_shape
        if not self._raw and rows * cols * pixel > LARGE_SEGMENT_BYTES:
            return (f"{self.path}: stored in compressed segments of {rows}x{cols} pixels; every window reads and "
                    f"decodes whole segments ({rows * cols * pixel / 1e6:.2f} MB each); rewrite it tiled (e.g. "
                    "tifffile tile=(512, 512)) to read less")
        return None

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as an array (y1 - y0, x1 - x0, bands) of the file's dtype."""
        if not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"window [{y0}:{y1}, {x0}:{x1}] outside {self.path} ({self.height}x{self.width})")
        if self.page.shaped[0] > 1:
            if self._whole is None:
                self._whole = np.moveaxis(self.page.asarray().reshape(self.page.shaped[0], self.height, self.width),
                                          0, -1)
            return self._whole[y0:y1, x0:x1]
        out = np.empty((y1 - y0, x1 - x0, self.bands), self.dtype)
        rows, cols = self.segment_shape
        per_row = -(-self.width // cols)
        handle = self._tiff.filehandle
        for sy in range(y0 // rows, (y1 - 1) // rows + 1):
            for sx in range(x0 // cols, (x1 - 1) // cols + 1):
                index = sy * per_row + sx
                top, left = sy * rows, sx * cols
                a, b = max(y0, top), min(y1, top + rows, self.height)
                c, d = max(x0, left), min(x1, left + cols)
                if self._raw:
                    out[a - y0:b - y0, c - x0:d - x0] = self._raw_rows(index, a - top, b - top, c - left, d - left)
                    continue
                handle.seek(self.page.dataoffsets[index])
                data = handle.read(self.page.databytecounts[index])
                segment, _, shape = self.page.decode(data or None, index, jpegtables=self.page.jpegtables)
                segment = (np.zeros(shape, self.dtype) if segment is None else segment).reshape(shape)[0]
                out[a - y0:b - y0, c - x0:d - x0] = segment[a - top:b - top, c - left:d - left]
        return out

    def _raw_rows(self, index: int, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows [r0:r1], columns [c0:c1] of uncompressed segment ``index``, read row by row from the file."""
        pixel = self.bands * self.dtype.itemsize
        width = self.segment_shape[1]
        dtype = self.dtype.newbyteorder(self._tiff.byteorder)
        handle = self._tiff.filehandle
        rows = []
        for r in range(r0, r1):
            handle.seek(self.page.dataoffsets[index] + (r * width + c0) * pixel)
            rows.append(np.frombuffer(handle.read((c1 - c0) * pixel), dtype))
        return np.stack(rows).reshape(r1 - r0, c1 - c0, self.bands)

    def close(self) -> None:
        self._tiff.close()

    def __enter__(self) -> "TiffWindows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
