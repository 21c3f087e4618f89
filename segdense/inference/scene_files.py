"""A streamed scene's files: the finished bands kept next to the output until the run ends, then written as a tiled,
compressed (Big)TIFF under a temporary name and renamed into place, so that a half-written file never stands under
the final name. The folder ``.NAME.tif.parts`` beside the output holds ``run.json`` (the fingerprint of the run's
inputs: checkpoint, scene, options) and one file per finished band: a rerun of the same run resumes after them; a
different run's folder or output is refused."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import tifffile

from segdense.errors import UserError
from segdense.version import __version__

from .cog import write_cog
from .writers import atomic_write_bytes, npy_bytes

TILE = 256  # output tile side: a multiple of 16, as TIFF requires


class SceneOutputError(UserError):
    """The output path holds another run's file, or the output would not fit on the disk."""


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(checkpoint: str | os.PathLike, scene: str | os.PathLike, options: dict) -> str:
    """What makes two runs the same: the checkpoint's contents, the scene file (path, size, modification time) and
    every option that changes a number."""
    stat = Path(scene).stat()
    data = {"checkpoint": file_digest(checkpoint), "scene": [str(Path(scene).resolve()), stat.st_size,
                                                           stat.st_mtime_ns], "options": options,
            "segdense": __version__}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


class SceneOutput:
    """``NAME.tif`` (class indices, a palette TIFF up to 256 classes; binary 0/1; multilabel one 0/1 band per class,
    ``label_bands`` of them, bands last) and with ``save_proba`` the probabilities ``NAME_proba.tif`` (float32,
    ``proba_bands`` bands last: one per class, binary one), for a ``height`` x ``width`` scene. With ``georef`` (the
    input's CRS and affine transform) both are Cloud-Optimized GeoTIFFs placed where the input lies."""

    def __init__(self, path: str | os.PathLike, fingerprint: str, height: int, width: int, num_classes: int,
                 save_proba: bool, palette: Sequence[Sequence[int]] | None = None,
                 georef: tuple[Any, Any] | None = None, label_bands: int = 1, proba_bands: int | None = None):
        self.path = Path(path)
        self.proba_path = self.path.with_name(self.path.stem + "_proba.tif")
        self.parts = self.path.with_name(f".{self.path.name}.parts")
        self.fingerprint, self.height, self.width = fingerprint, height, width
        self.num_classes, self.save_proba = num_classes, save_proba
        self.palette = palette if label_bands == 1 else None
        self.label_bands, self.proba_bands = label_bands, proba_bands or num_classes
        self.label_dtype = np.dtype(np.uint8 if num_classes <= 256 else np.uint16)
        self.georef = georef

    def is_complete(self) -> bool:
        """Whether the output already holds this run's result (the other one: :class:`SceneOutputError`)."""
        if not self.path.exists():
            return False
        found = _stored_fingerprint(self.path)
        if found != self.fingerprint:
            raise SceneOutputError(f"{self.path} already exists and is not this run's output ("
                                   f"{'another run' if found else 'not written by a scene prediction'}); "
                                   "choose another output or pass overwrite=true")
        return True

    def start(self, overwrite: bool = False) -> set[int]:
        """Prepare the parts folder and return the bands a previous run of this run already finished. Refuses
        another run's folder (unless ``overwrite``: then it is cleared) and a disk without room."""
        state = self.parts / "run.json"
        if state.exists() and json.loads(state.read_text()).get("fingerprint") != self.fingerprint:
            if not overwrite:
                raise SceneOutputError(f"{self.parts} holds the unfinished bands of another run (other checkpoint, "
                                       "scene or options); rerun that run's command to finish it, or pass "
                                       "overwrite=true to start over")
            shutil.rmtree(self.parts)
        bands = self.parts.glob("band_*.labels.npy") if state.exists() else []
        done = {int(p.name.split("_")[1].split(".")[0]) for p in bands}
        self.check_disk_space()
        self.parts.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(state, json.dumps({"fingerprint": self.fingerprint}).encode())
        return done

    def needed_bytes(self) -> int:
        """The most the run writes: every band, then the TIFFs (uncompressed at worst) before the bands go, and
        for a Cloud-Optimized GeoTIFF its copy with overviews (a third more)."""
        pixel = self.label_dtype.itemsize * self.label_bands + (4 * self.proba_bands if self.save_proba else 0)
        copies = 2 if self.georef is None else 2 + 4 / 3
        return int(copies * self.height * self.width * pixel)

    def check_disk_space(self) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if self.needed_bytes() > free:
            raise SceneOutputError(f"{self.path}: a {self.height}x{self.width} scene needs up to "
                                   f"{self.needed_bytes() / 1e9:.2f} GB (its bands, then the TIFF"
                                   f"{'s' if self.save_proba else ''} uncompressed at worst"
                                   f"{'' if self.georef is None else ' and their Cloud-Optimized copies'}) and "
                                   f"{self.path.parent} has {free / 1e9:.2f} GB free")

    def write_band(self, k: int, labels: np.ndarray, proba: np.ndarray | None) -> None:
        if proba is not None:  # the labels last: their file marks the band done
            atomic_write_bytes(self.parts / f"band_{k:06d}.proba.npy", npy_bytes(proba))
        atomic_write_bytes(self.parts / f"band_{k:06d}.labels.npy", npy_bytes(labels))

    def finish(self, bands: Sequence[tuple[int, int]]) -> None:
        """Write the TIFFs from the bands (rows [top, bottom) each, in order), rename them into place and remove
        the parts folder."""
        colormap = None
        if self.palette is not None and self.label_dtype == np.uint8:
            colormap = np.zeros((3, 256), np.uint16)
            colormap[:, :len(self.palette)] = np.asarray(self.palette, np.uint16).T[:, :256] * 257
        samples = (self.label_bands,) if self.label_bands > 1 else ()
        self._write(self.path, "labels", bands, samples, self.label_dtype, colormap)
        if self.save_proba:
            self._write(self.proba_path, "proba", bands, (self.proba_bands,) if self.proba_bands > 1 else (),
                        np.dtype(np.float32), None)
        shutil.rmtree(self.parts)

    def _write(self, path: Path, kind: str, bands, samples: tuple, dtype: np.dtype, colormap) -> None:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        cog = path.with_name(f".{path.name}.cog{os.getpid()}")
        try:
            tifffile.imwrite(tmp, data=self._tiles(kind, bands), shape=(self.height, self.width, *samples),
                             dtype=dtype, tile=(TILE, TILE), compression="zlib", bigtiff=True,
                             photometric="palette" if colormap is not None else "minisblack", colormap=colormap,
                             planarconfig="contig" if samples else None, metadata=None,
                             description=json.dumps({"segdense_scene": self.fingerprint, "kind": kind}))
            if self.georef is not None:
                write_cog(tmp, cog, *self.georef, TILE, "NEAREST" if kind == "labels" else "AVERAGE")
            os.replace(cog if self.georef is not None else tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
            cog.unlink(missing_ok=True)

    def _tiles(self, kind: str, bands: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
        """The output's tiles in row-major order, read from the band files one tile row at a time (memory-mapped:
        only the pages of the rows a tile needs)."""
        for y0 in range(0, self.height, TILE):
            y1 = min(self.height, y0 + TILE)
            pieces = [(top, bottom, np.load(self.parts / f"band_{k:06d}.{kind}.npy", mmap_mode="r"))
                      for k, (top, bottom) in enumerate(bands) if top < y1 and bottom > y0]
            for x0 in range(0, self.width, TILE):
                x1 = min(self.width, x0 + TILE)
                yield np.concatenate([_rows(band, max(y0, top) - top, min(y1, bottom) - top, x0, x1)
                                      for top, bottom, band in pieces])
            del pieces


def _rows(band: np.ndarray, r0: int, r1: int, x0: int, x1: int) -> np.ndarray:
    if band.ndim == 3 and band.shape[0] == 1:  # a binary task's probability: one band
        return np.array(band[0, r0:r1, x0:x1])
    if band.ndim == 3:  # probabilities, multilabel labels: (C, h, W) -> (h, w, C)
        return np.ascontiguousarray(np.moveaxis(band[:, r0:r1, x0:x1], 0, -1))
    return np.array(band[r0:r1, x0:x1])


def _stored_fingerprint(path: Path) -> str | None:
    try:
        with tifffile.TiffFile(path) as tiff:
            return json.loads(tiff.pages.first.description or "{}").get("segdense_scene")
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
