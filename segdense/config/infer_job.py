"""``infer_job(cfg)`` for tools/infer.py: predict on files and write the outputs."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from segdense.data.loader import ShardSampler
from segdense.errors import config_values
from segdense.inference import Predictor, load_bundle
from segdense.inference.files import InferenceReport, list_inputs, predict_files
from segdense.inference.writers import check_writable_dir
from segdense.runtime import gather_to_main, process_rank

from .eval_job import infer_options
from .processes import main_process_result, start_processes
from .scene_job import scene_job

logger = logging.getLogger("segdense.infer")


def infer_job(cfg: DictConfig):
    """Predict every image named by ``cfg.input`` into ``cfg.output``; returns the
    :class:`~segdense.inference.files.InferenceReport` (the tool exits 1 when any image failed). Started as several
    processes (torchrun, srun), each predicts its share of the images and writes their outputs; rank 0 returns and
    prints the report of all of them, the others their own. Rank 0 lists the input and every process uses its list;
    images inside ``output`` are no inputs (:func:`~segdense.inference.files.list_inputs`). ``mode=scene``: TIFFs
    of any size, streamed (:func:`~segdense.config.scene_job.scene_job`)."""
    device, world = start_processes(cfg.device, cfg.process_timeout)
    files = main_process_result(lambda: list_inputs(cfg.input, cfg.output))
    bundle = load_bundle(cfg.checkpoint)
    output = check_writable_dir(cfg.output)
    if cfg.mode == "scene":
        return scene_job(cfg, files, bundle, device, output)
    with config_values("inference options"):
        predictor = Predictor(bundle, device=str(device), amp=cfg.amp, batch_size=cfg.batch_size,
                              fold_batchnorms=bool(cfg.fold_batchnorms),
                              **infer_options(cfg, bundle))
    logger.info("%s: %d image(s)%s -> %s", predictor, len(files), f" across {world} processes" if world > 1 else "",
                output)
    root = Path(cfg.input) if Path(cfg.input).is_dir() else None
    shard = ShardSampler(len(files), *process_rank(), block=predictor.batch_size)  # whole batches, as eval's loader
    report = predict_files(predictor, files, output, root=root, overwrite=cfg.overwrite, save_overlay=cfg.overlay,
                           save_proba=cfg.save_proba, progress=cfg.progress, indices=list(shard),
                           multilabel_format=cfg.multilabel_format)
    parts = gather_to_main(report)
    if parts is None:
        return report
    report = InferenceReport.merged(parts, files)
    print(report.summary())
    return report
