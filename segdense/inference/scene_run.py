"""Predicting one scene file into one output, as one process or as one of several that share its bands."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from segdense.data.loader import ShardSampler
from segdense.data.tiff_windows import TiffWindows
from segdense.errors import ConfigError
from segdense.readers import georeference

from .predictor import Predictor
from .scene import SceneGrid, StreamedSlide, scene_grid
from .scene_files import SceneOutput

logger = logging.getLogger("segdense.infer")


@dataclass
class SceneJob:
    """A scene (read by window), its grid of windows and its output."""

    source: TiffWindows
    grid: SceneGrid
    output: SceneOutput

    def plan(self, overwrite: bool = False) -> set[int] | None:
        """The bands already finished by an earlier run of this run (None: the output is complete)."""
        if not overwrite and self.output.is_complete():
            return None
        done = self.output.start(overwrite)
        if done:
            logger.info("%s: resuming, %d of %d bands already done", self.output.path, len(done), self.grid.num_bands)
        return done

    def share(self, rank: int, world: int) -> list[int]:
        """Rank ``rank``'s bands: one contiguous run of them, so that each process adds few rows of windows twice."""
        return list(ShardSampler(self.grid.num_bands, rank, world, block=math.ceil(self.grid.num_bands / world)))

    def predict(self, predictor: Predictor, bands: Sequence[int], progress: bool = False) -> None:
        stream = StreamedSlide(predictor, self.grid, save_proba=self.output.save_proba, progress=progress)
        for k, labels, proba in stream.bands(self.source.read, bands):
            self.output.write_band(k, labels, proba)

    def finish(self) -> None:
        self.output.finish([self.grid.band(k) for k in range(self.grid.num_bands)])


def open_scene(path: str | os.PathLike, output: str | os.PathLike, predictor: Predictor, crop: Sequence[int],
               stride: Sequence[int] | None, blend: str, fingerprint: str, save_proba: bool = False) -> SceneJob:
    source = TiffWindows(path)
    grid = scene_grid(source.height, source.width, crop, stride, blend)
    task = predictor.task
    sink = SceneOutput(output, fingerprint, source.height, source.width, predictor.num_classes, save_proba,
                       predictor.palette, georeference(path),
                       label_bands=task.num_classes if task.target_dims == 4 else 1, proba_bands=task.out_channels)
    return SceneJob(source, grid, sink)


def predict_scene(predictor: Predictor, path: str | os.PathLike, output: str | os.PathLike, crop: Sequence[int],
                  stride: Sequence[int] | None, blend: str, fingerprint: str, save_proba: bool = False,
                  overwrite: bool = False, progress: bool = False) -> bool:
    """Predict the TIFF ``path`` into ``output`` in one process, resuming an interrupted run of the same
    ``fingerprint``; False when the output already held this run's result."""
    job = open_scene(path, output, predictor, crop, stride, blend, fingerprint, save_proba)
    with job.source:
        done = job.plan(overwrite)
        if done is None:
            return False
        job.predict(predictor, [k for k in range(job.grid.num_bands) if k not in done], progress)
        job.finish()
    return True


def scene_inputs(files: Sequence[Path]) -> list[Path]:
    """``files`` when all are TIFFs; otherwise one error naming the others."""
    others = [str(p) for p in files if p.suffix.lower() not in (".tif", ".tiff")]
    if others:
        raise ConfigError(f"mode=scene reads TIFF files window by window; not a .tif/.tiff: {', '.join(others[:5])}"
                          f"{' ...' if len(others) > 5 else ''}")
    return list(files)
