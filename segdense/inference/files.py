"""Running a :class:`Predictor` over image files and writing the results."""
from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .draw import overlay
from .images import ImageReadError, load_image
from .predictor import Predictor
from .writers import write_label_png, write_npy, write_png

logger = logging.getLogger("segdense.infer")


@dataclass
class InferenceReport:
    written: list[Path] = field(default_factory=list)     # inputs whose outputs were written
    skipped: list[Path] = field(default_factory=list)     # inputs whose outputs already existed
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, why)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = (f"{len(self.written)} image(s) written, {len(self.skipped)} skipped (outputs exist), "
                f"{len(self.failed)} failed")
        for path, why in self.failed:
            text += f"\n  failed: {path}: {why}"
        return text


def output_names(files: Sequence[Path], root: Path | None) -> list[Path]:
    """Output stem (relative path without suffix) per input: the path below ``root`` (a directory input) or the
    file name; inputs sharing a stem in one folder (``a.jpg``, ``a.png``) keep their extension (``a_jpg``)."""
    def relative(p: Path) -> Path:
        if root is not None:
            try:
                return p.relative_to(root)
            except ValueError:
                pass
        return Path(p.name)

    rel = [relative(p) for p in files]
    stems = Counter(r.with_suffix("") for r in rel)
    return [r.with_suffix("") if stems[r.with_suffix("")] == 1 else r.with_name(r.stem + "_" + r.suffix.lstrip("."))
            for r in rel]


def predict_files(predictor: Predictor, files: Sequence[Path], output: Path, root: Path | None = None,
                  overwrite: bool = False, save_overlay: bool = True, save_proba: bool = False,
                  progress: bool = True) -> InferenceReport:
    """Predict every file and write ``<name>.png`` (palette PNG of class indices), ``<name>_overlay.png`` (image,
    prediction and legend) and, with ``save_proba``, ``<name>_proba.npy`` (float16 (C, H, W) probabilities).

    Unreadable images are reported and skipped; existing outputs are kept unless ``overwrite``."""
    report = InferenceReport()
    names = output_names(files, root)
    todo = []
    for path, name in zip(files, names):
        targets = _targets(output / name, save_overlay, save_proba)
        if not overwrite and any(t.exists() for t in targets):
            logger.warning("%s: output %s exists, skipped (pass overwrite=true to replace it)", path,
                           next(t for t in targets if t.exists()))
            report.skipped.append(path)
        else:
            todo.append((path, targets))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="infer", unit="img", dynamic_ncols=True, disable=not sys.stderr.isatty())
    for start in range(0, len(todo), predictor.batch_size):
        chunk = []
        for path, targets in todo[start:start + predictor.batch_size]:
            try:
                chunk.append((path, targets, load_image(path)))
            except ImageReadError as e:
                logger.error("cannot read %s", e)
                report.failed.append((path, str(e).split(": ", 1)[-1]))
                if bar is not None:
                    bar.update(1)
        if not chunk:
            continue
        logits = predictor.logits_batch([image for _, _, image in chunk])
        for (path, targets, image), item in zip(chunk, logits):
            labels = item.argmax(0).numpy()
            try:
                write_label_png(targets[0], labels, predictor.palette)
                if save_overlay:
                    write_png(targets[1], overlay(image, labels, predictor.palette, predictor.class_names))
                if save_proba:
                    write_npy(targets[-1], item.softmax(0).numpy().astype(np.float16))
                report.written.append(path)
            except OSError as e:
                logger.error("cannot write the outputs of %s: %s", path, e)
                report.failed.append((path, f"writing outputs failed: {e}"))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return report


def _targets(stem: Path, save_overlay: bool, save_proba: bool) -> list[Path]:
    targets = [stem.with_name(stem.name + ".png")]
    if save_overlay:
        targets.append(stem.with_name(stem.name + "_overlay.png"))
    if save_proba:
        targets.append(stem.with_name(stem.name + "_proba.npy"))
    return targets
