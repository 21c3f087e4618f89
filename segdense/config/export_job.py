"""``export_job(cfg)`` for tools/export.py."""
from __future__ import annotations

import logging
import math
from pathlib import Path

from torch.utils.data import Subset

from omegaconf import DictConfig, OmegaConf

from segdense.errors import ConfigError
from segdense.export import DTYPES, FORMATS, export_model
from segdense.export.parity import (
    check_parity_on_images, checkpoint_dataset, choose_indices, dataset_images, file_images, folder_images,
    validation_images,
)
from segdense.export.quantize import calibration_overlap, export_int8
from segdense.inference import load_bundle
from segdense.inference.images import find_images
from segdense.inference.onnx_model import OnnxModel
from segdense.inference.writers import check_writable_dir

logger = logging.getLogger("segdense.export")


def export_job(cfg: DictConfig) -> list[dict]:
    """Export ``cfg.checkpoint`` as ``cfg.format`` to ``cfg.output`` and print the parity checks: random inputs of
    ``cfg.sizes``, then ``cfg.verify_images`` real images (the checkpoint's validation set or ``cfg.verify_input``).
    The checkpoint is read first: a file that is not one is named before any other option is asked for."""
    bundle = load_bundle(cfg.checkpoint)
    if isinstance(bundle.model, OnnxModel):
        raise ConfigError(f"checkpoint={cfg.checkpoint} is already an ONNX model; export from the .pt checkpoint "
                          "or .safetensors file it was made from")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: expected one of {', '.join(FORMATS)}")
    output = Path(cfg.output)
    if output.exists() and not cfg.overwrite:
        raise ConfigError(f"output={output} exists; pass overwrite=true to replace it")
    sizes = _sizes(cfg)
    if cfg.dtype not in DTYPES or (cfg.dtype != "fp32" and cfg.format != "onnx"):
        raise ConfigError(f"dtype={cfg.dtype}: expected fp32, or fp16 with format=onnx")
    on_images = cfg.verify and cfg.format in ("onnx", "torchscript") and cfg.verify_images > 0
    if cfg.verify and cfg.dtype == "fp16" and not on_images:
        raise ConfigError("dtype=fp16 is judged on real images: keep verify_images > 0 (or pass verify=false)")
    if not 0 < cfg.min_agreement <= 100:
        raise ConfigError(f"min_agreement={cfg.min_agreement}: expected a percentage in (0, 100]")
    check_writable_dir(output.parent)
    if cfg.quantize is not None:
        return export_int8_job(cfg, bundle, output)
    images = []
    if on_images:  # gather them first: a missing dataset fails before anything is written
        images = (folder_images(bundle, cfg.verify_input, cfg.verify_images) if cfg.verify_input
                  else validation_images(bundle, cfg.verify_images))
    results = export_model(bundle, cfg.format, output, sizes=sizes, opset=cfg.opset, verify=cfg.verify,
                           tolerance=cfg.tolerance, dtype=cfg.dtype)
    for r in results:
        print(f"  input {r['batch']}x{r['size'][0]}x{r['size'][1]}: max |exported - PyTorch| = {r['max_abs_diff']:.3g}")
    if on_images:
        p = check_parity_on_images(bundle.model, cfg.format, output, images, cfg.min_agreement, bundle.task)
        kind = "argmax" if bundle.task.name == "multiclass" else f"{bundle.task.name} label"
        print(f"  {p['images']} real image(s), {p['pixels']:,} pixels: {kind} agreement {p['agreement']:.3f} % "
              f"(min {cfg.min_agreement:g} %), max |exported - PyTorch| logit = {p['max_abs_diff']:.3g}, "
              f"probability = {p['max_proba_diff']:.3g}")
        results = [*results, {"real_images": p}]
    print(f"wrote {output} ({cfg.format}{', fp16' if cfg.dtype == 'fp16' else ''})")
    return results


def export_int8_job(cfg: DictConfig, bundle, output: Path) -> dict:
    """``quantize=int8``: calibrate, quantize, score float32 and INT8 on the validation images, print both and
    write the INT8 file unless it loses more than ``cfg.max_miou_drop`` mIoU points (or ``cfg.force``)."""
    if cfg.quantize != "int8" or cfg.format != "onnx" or cfg.dtype != "fp32":
        raise ConfigError(f"quantize={cfg.quantize} format={cfg.format} dtype={cfg.dtype}: expected quantize=int8 "
                          "with format=onnx dtype=fp32")
    if cfg.calibration < 1 or (cfg.eval_images is not None and cfg.eval_images < 1):
        raise ConfigError(f"calibration={cfg.calibration} eval_images={cfg.eval_images}: expected positive counts "
                          "(eval_images=null: the whole validation split)")
    if not isinstance(cfg.calibration_seed, int) or isinstance(cfg.calibration_seed, bool):
        raise ConfigError(f"calibration_seed={cfg.calibration_seed}: expected an integer")
    if not isinstance(cfg.max_miou_drop, (int, float)) or not math.isfinite(cfg.max_miou_drop):
        raise ConfigError(f"max_miou_drop={cfg.max_miou_drop}: expected a number of mIoU points")
    calibration, files, source = _calibration_images(cfg, bundle)
    val = checkpoint_dataset(bundle, "val_split", "quantize=int8 scores float32 and INT8 on it, so "
                             "it must be on this machine where the checkpoint says")
    eval_set = val if cfg.eval_images is None else Subset(val, range(min(cfg.eval_images, len(val))))
    _warn_if_evaluated([path for path, _ in getattr(val, "files", [])][:len(eval_set)], files)
    print(f"calibrating on {source}; evaluating on {len(eval_set)} validation image(s)")
    result = export_int8(bundle, output, calibration, eval_set, cfg.max_miou_drop, force=cfg.force, opset=cfg.opset,
                         calibration_source=source, calibration_seed=cfg.calibration_seed, sizes=_sizes(cfg),
                         report=print)
    forced = "; forced past the accuracy guard" if result["forced"] else ""
    print(f"wrote {output} (onnx, int8{forced})\n  to time it against float32: python tools/export.py "
          f"checkpoint={cfg.checkpoint} format=onnx output=FLOAT.onnx, then python tools/benchmark.py --onnx-models "
          f"FLOAT.onnx {output} --crop 512 --batch 1")
    return result


def _calibration_images(cfg: DictConfig, bundle) -> tuple[list, list[Path], str]:
    """(images, their files where they have some, where they come from) of ``cfg.calibration`` images chosen with
    ``cfg.calibration_seed`` from ``cfg.calibration_dir`` or the checkpoint's training split."""
    seed = cfg.calibration_seed
    if cfg.calibration_dir:
        paths = find_images(str(cfg.calibration_dir))
        files = [paths[i] for i in choose_indices(len(paths), cfg.calibration, seed)]
        images, where = file_images(bundle, files), f"{len(paths)} images of {cfg.calibration_dir}"
    else:
        train = checkpoint_dataset(bundle, "train_split", "pass calibration_dir=DIR (a folder of images)")
        images, where = dataset_images(train, cfg.calibration, seed), f"{len(train)} images of the training split"
        files = [Path(name) for name, _ in images] if getattr(train, "files", None) else []  # describe(): its path
    if not images:
        raise ConfigError(f"no calibration image found in {cfg.calibration_dir or 'the training split'}")
    return [image for _, image in images], files, f"{len(images)} of the {where} (seed {seed})"


def _warn_if_evaluated(eval_files: list[Path], calibration_files: list[Path]) -> None:
    shared = calibration_overlap(calibration_files, eval_files)
    if shared:
        logger.warning("%d of the %d calibration image(s) are also among the %d validation images the INT8 guard "
                       "scores on (same file content, e.g. %s and %s), so the guard may judge INT8 too kindly; "
                       "calibrate on images the evaluation does not use", len({c for c, _ in shared}),
                       len(calibration_files), len(eval_files), *shared[0])


def _sizes(cfg: DictConfig) -> list[list[int]]:
    sizes = [list(s) for s in OmegaConf.to_container(cfg.sizes)]
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ConfigError(f"sizes={sizes}: expected a list of [height, width] pairs")
    return sizes
