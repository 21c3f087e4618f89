"""``infer_job(cfg)`` for tools/infer.py: predict on files and write the outputs."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from segdense.errors import config_values
from segdense.inference import Predictor, load_bundle
from segdense.inference.files import predict_files
from segdense.inference.images import find_images
from segdense.inference.writers import check_writable_dir

from .eval_job import infer_options

logger = logging.getLogger("segdense.infer")


def infer_job(cfg: DictConfig):
    """Predict every image named by ``cfg.input`` into ``cfg.output``; returns the
    :class:`~segdense.inference.files.InferenceReport` (the tool exits 1 when any image failed)."""


    files = find_images(cfg.input)
    bundle = load_bundle(cfg.checkpoint)
    output = check_writable_dir(cfg.output)
    with config_values("inference options"):
        predictor = Predictor(bundle, device=cfg.device, amp=cfg.amp, batch_size=cfg.batch_size,
                              **infer_options(cfg, bundle))
    logger.info("%s: %d image(s) -> %s", predictor, len(files), output)
    root = Path(cfg.input) if Path(cfg.input).is_dir() else None
    report = predict_files(predictor, files, output, root=root, overwrite=cfg.overwrite, save_overlay=cfg.overlay,
                           save_proba=cfg.save_proba, progress=cfg.progress)
    print(report.summary())
    return report
