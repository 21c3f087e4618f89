"""Running a :class:`Predictor` over image files and writing the results."""
from __future__ import annotations

import glob
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from segdense.errors import ConfigError, MissingFileError

from .draw import overlay
from .images import ImageReadError, find_images
from .label_files import LabelFiles
from .predictor import Predictor
from .writers import atomic_write_files, npy_bytes, png_bytes

logger = logging.getLogger("segdense.infer")


@dataclass
class InferenceReport:
    written: list[Path] = field(default_factory=list)     # inputs whose outputs were written
    skipped: list[Path] = field(default_factory=list)     # inputs whose outputs already existed
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, why)

    @property
    def ok(self) -> bool:
        return not self.failed

    @classmethod
    def merged(cls, reports: Sequence["InferenceReport"], files: Sequence[Path]) -> "InferenceReport":
        """One report of several processes' reports on shares of ``files``, in the order of ``files``."""
        position = {path: i for i, path in enumerate(files)}
        return cls(sorted((p for r in reports for p in r.written), key=position.__getitem__),
                   sorted((p for r in reports for p in r.skipped), key=position.__getitem__),
                   sorted((f for r in reports for f in r.failed), key=lambda f: position[f[0]]))

    def summary(self) -> str:
        text = (f"{len(self.written)} image(s) written, {len(self.skipped)} skipped (outputs exist), "
                f"{len(self.failed)} failed")
        for path, why in self.failed:
            text += f"\n  failed: {path}: {why}"
        return text


def list_inputs(spec: str | os.PathLike, output: str | os.PathLike) -> list[Path]:
    """The images ``spec`` names (:func:`~segdense.inference.images.find_images`: a file, a folder searched
    recursively, or a glob), less those inside ``output`` when ``output`` lies within the folder the listing
    searches: a rerun into ``input/predictions`` must not take the previous run's predictions for images. How many
    were left out is logged; one :class:`MissingFileError` when nothing else is left."""
    files = find_images(spec)
    root = _listing_root(spec)
    output = Path(output).resolve()
    if root is None or output == root or root not in output.parents:
        return files
    kept = [p for p in files if output not in p.resolve().parents]
    if len(kept) < len(files):
        logger.info("input=%s: %d image(s) inside output=%s left out (outputs of an earlier run are not inputs)",
                    spec, len(files) - len(kept), output)
    if not kept:
        raise MissingFileError(f"input={spec}: every image it holds ({len(files)}) lies inside output={output}; "
                               "nothing is left to predict")
    return kept


def _listing_root(spec: str | os.PathLike) -> Path | None:
    """The folder whose tree a listing of ``spec`` searches: the folder itself, a glob's fixed leading folders
    (``shots/**/*.png``: ``shots``); None for one file."""
    path = Path(spec)
    if path.is_file():
        return None
    if path.is_dir():
        return path.resolve()
    fixed = []
    for part in path.parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed).resolve() if fixed else Path.cwd().resolve()


def output_names(files: Sequence[Path], root: Path | None) -> list[Path]:
    """Output stem (relative path without suffix) per input: the path below ``root`` (a directory input) or, without
    a root, below the folder all inputs share (so ``shots/a/1.png`` and ``shots/b/1.png`` from a glob give ``a/1``
    and ``b/1``); one file gives its name. Inputs sharing a stem in one folder (``a.jpg``, ``a.png``) keep their
    extension (``a_jpg``)."""
    if root is None and len(files) > 1:
        root = Path(os.path.commonpath([p.absolute().parent for p in files]))

    def relative(p: Path) -> Path:
        if root is not None:
            try:
                return p.absolute().relative_to(root.absolute())
            except ValueError:
                pass
        return Path(p.name)

    rel = [relative(p) for p in files]
    stems = Counter(r.with_suffix("") for r in rel)
    return [r.with_suffix("") if stems[r.with_suffix("")] == 1 else r.with_name(r.stem + "_" + r.suffix.lstrip("."))
            for r in rel]


def predict_files(predictor: Predictor, files: Sequence[Path], output: Path, root: Path | None = None,
                  overwrite: bool = False, save_overlay: bool = True, save_proba: bool = False,
                  progress: bool = True, indices: Sequence[int] | None = None,
                  multilabel_format: str = "tiff") -> InferenceReport:
    """Predict every file and write its labels as the model's task makes them
    (:mod:`~segdense.inference.label_files`: ``<name>.png``, a palette PNG of class indices, binary 0/1; multilabel
    ``<name>.tif`` with one 0/1 band per class, or with ``multilabel_format=png`` ``<name>_<class>.png`` per class),
    ``<name>_overlay.png`` (image, prediction and legend) and, with ``save_proba``, ``<name>_proba.npy`` (float16
    (C, H, W) probabilities: softmax, binary (1, H, W) foreground sigmoid, multilabel C sigmoids).

    An image's outputs are written together (all or none). Unreadable images are reported and skipped; an image
    whose outputs all exist is skipped unless ``overwrite``; one with only some of them (another file of the same
    name, or a run killed between two renames) is reported as failed, and nothing of it is overwritten.

    ``indices``: the positions in ``files`` this process handles (default: all), e.g. its
    :class:`~segdense.data.loader.ShardSampler` shard under ``torch.distributed``; output names come from all the
    files, so they do not depend on the process count. The report covers those images only."""
    report = InferenceReport()
    names = output_names(files, root)
    label_files = LabelFiles(predictor.task, predictor.palette, multilabel_format)
    all_targets = [_targets(output / name, label_files.suffixes, save_overlay, save_proba) for name in names]
    _check_unique(files, all_targets)
    mine = range(len(files)) if indices is None else indices
    todo = _to_do([files[i] for i in mine], [all_targets[i] for i in mine], overwrite, report)
    bar = tqdm(total=len(todo), desc="infer", unit="img", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()))
    for start in range(0, len(todo), predictor.batch_size):
        chunk = []
        for path, targets in todo[start:start + predictor.batch_size]:
            try:
                chunk.append((path, targets, predictor.preprocess(path)))
            except ImageReadError as e:
                logger.error("cannot read %s", e)
                report.failed.append((path, str(e).split(": ", 1)[-1]))
                bar.update(1)
        if chunk:
            _write_chunk(predictor, chunk, label_files, save_overlay, save_proba, report)
            bar.update(len(chunk))
    bar.close()
    return report


def _to_do(files: Sequence[Path], all_targets: Sequence[list[Path]], overwrite: bool,
           report: InferenceReport) -> list[tuple[Path, list[Path]]]:
    """The (image, its outputs) to predict; an image whose outputs all exist is skipped unless ``overwrite``, one
    with only some of them is a failure (nothing of it is overwritten)."""
    todo = []
    for path, targets in zip(files, all_targets):
        existing = [t for t in targets if t.exists()]
        if overwrite or not existing:
            todo.append((path, targets))
        elif len(existing) == len(targets):
            logger.warning("%s: its outputs exist (%s), skipped (pass overwrite=true to replace them)", path,
                           ", ".join(t.name for t in targets))
            report.skipped.append(path)
        else:
            missing = [t.name for t in targets if not t.exists()]
            why = (f"only some of its outputs exist ({', '.join(t.name for t in existing)}; missing "
                   f"{', '.join(missing)}); nothing was overwritten: pass overwrite=true to replace them")
            logger.error("%s: %s", path, why)
            report.failed.append((path, why))
    return todo


def _write_chunk(predictor: Predictor, chunk: list, label_files: LabelFiles, save_overlay: bool, save_proba: bool,
                 report: InferenceReport) -> None:
    """Predict a chunk of read images and write each one's outputs together (all or none)."""
    logits = predictor.logits_prepared([prepared for _, _, prepared in chunk])
    for (path, targets, (image, _)), item in zip(chunk, logits):
        labels = predictor.labels(item)
        data = label_files.encode(labels)
        if save_overlay:
            data.append(png_bytes(overlay(image, labels, predictor.palette, predictor.class_names)))
        if save_proba:
            data.append(npy_bytes(predictor.probabilities(item).astype(np.float16)))
        try:
            atomic_write_files(dict(zip(targets, data)))
            report.written.append(path)
        except OSError as e:
            logger.error("cannot write the outputs of %s: %s", path, e)
            report.failed.append((path, f"writing outputs failed: {e}"))


def _check_unique(files: Sequence[Path], all_targets: Sequence[Sequence[Path]]) -> None:
    """One error, before anything is written, when two inputs would write the same output file (an input named
    ``a_overlay.png`` next to ``a.png``), or an output would replace an input (``output`` the input folder)."""
    inputs = {os.path.abspath(path) for path in files}
    owner: dict[Path, Path] = {}
    for path, targets in zip(files, all_targets):
        for target in targets:
            if os.path.abspath(target) in inputs:
                raise ConfigError(f"the outputs of {path} would replace the input {target}; choose an output folder "
                                  "that is not the input's (nothing was written)")
            if target in owner:
                raise ConfigError(f"{owner[target]} and {path} would both write {target}; rename one of them "
                                  "(nothing was written)")
            owner[target] = path


def _targets(stem: Path, label_suffixes: Sequence[str], save_overlay: bool, save_proba: bool) -> list[Path]:
    targets = [stem.with_name(stem.name + suffix) for suffix in label_suffixes]
    if save_overlay:
        targets.append(stem.with_name(stem.name + "_overlay.png"))
    if save_proba:
        targets.append(stem.with_name(stem.name + "_proba.npy"))
    return targets
