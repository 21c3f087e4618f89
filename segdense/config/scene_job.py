"""``mode=scene`` of tools/infer.py: every TIFF named by ``input`` predicted by streamed slide inference into
``output/NAME.tif`` (and ``NAME_proba.tif``), its bands shared between the processes of a torchrun/srun start."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from segdense.errors import ConfigError, config_values
from segdense.inference import Predictor
from segdense.inference.files import InferenceReport, output_names
from segdense.inference.scene_files import run_fingerprint
from segdense.inference.scene_run import open_scene, scene_inputs
from segdense.runtime import gather_to_main, process_rank

from .eval_job import infer_options
from .processes import main_process_result

logger = logging.getLogger("segdense.infer")


def scene_job(cfg: DictConfig, files: list[Path], bundle, device, output: Path) -> InferenceReport:
    options = infer_options(cfg, bundle)
    crop = options["crop_size"]
    if crop is None:
        raise ConfigError("mode=scene needs crop_size (e.g. crop_size=[512,512]); the checkpoint has no training crop")
    blend = cfg.blend or "gaussian"
    with config_values("inference options"):
        predictor = Predictor(bundle, device=str(device), amp=cfg.amp, batch_size=cfg.batch_size,
                              fold_batchnorms=bool(cfg.fold_batchnorms),
                              **{**options, "mode": "whole", "blend": blend})
    settings = {"crop_size": list(crop), "stride": options["stride"], "blend": blend, "scales": options["scales"],
                "flip": options["flip"], "batch_size": predictor.batch_size, "amp": str(predictor.amp_dtype),
                "device": predictor.device.type, "save_proba": bool(cfg.save_proba)}
    root = Path(cfg.input) if Path(cfg.input).is_dir() else None
    report = InferenceReport()
    for path, name in zip(scene_inputs(files), output_names(files, root)):
        written = predict_one(cfg, predictor, path, output / f"{name}.tif", crop, options["stride"], blend,
                              run_fingerprint(cfg.checkpoint, path, settings))
        (report.written if written else report.skipped).append(path)
    gather_to_main(None)  # every process done with every scene before rank 0 reports
    print(report.summary())
    return report


def predict_one(cfg: DictConfig, predictor: Predictor, path: Path, target: Path, crop, stride, blend: str,
                fingerprint: str) -> bool:
    """One scene by every process: rank 0 plans (resume, refusal, disk space), each predicts its bands, rank 0
    writes the TIFF once all are done. False when the output already held this run's result."""
    target.parent.mkdir(parents=True, exist_ok=True)
    job = open_scene(path, target, predictor, crop, stride, blend, fingerprint, bool(cfg.save_proba))
    with job.source:
        done = main_process_result(lambda: job.plan(bool(cfg.overwrite)))
        if done is None:
            logger.info("%s: already predicted by this run, skipped", target)
            return False
        rank, world = process_rank()
        logger.info("%s: %dx%d, %d windows in %d bands%s -> %s", path, job.grid.height, job.grid.width,
                    job.grid.num_windows, job.grid.num_bands, f" across {world} processes" if world > 1 else "",
                    target)
        job.predict(predictor, [k for k in job.share(rank, world) if k not in done], bool(cfg.progress))
        gather_to_main(None)
        if rank == 0:
            job.finish()
    return True
