"""``evaluate_job(cfg)`` for tools/eval.py."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segdense.data import build_dataset, build_transforms, resolve_num_workers
from segdense.errors import ConfigError, config_values
from segdense.inference import build_infer, load_bundle
from segdense.evaluation import evaluate_model
from segdense.inference.loading import input_channels, min_input_size
from segdense.inference.tta import describe_infer
from segdense.metrics import format_metrics_table
from segdense.runtime import gather_to_all, is_main_process, resolve_amp

from .processes import main_process_directory, start_processes

logger = logging.getLogger("segdense.eval")


def infer_options(cfg: DictConfig, bundle) -> dict:
    """``build_infer`` arguments from the mode/crop_size/stride/scales/flip keys (crop default: training crop)."""
    def plain(value):
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    return dict(
        mode=cfg.mode, crop_size=plain(cfg.crop_size) if cfg.crop_size is not None else bundle.crop_size,
        stride=plain(cfg.stride), scales=plain(cfg.scales), flip=bool(cfg.flip),
        **({"blend": cfg.blend} if cfg.get("blend") else {}),
    )


def build_eval_dataset(cfg: DictConfig, bundle):
    """The dataset named by ``cfg.dataset`` (when given) or the checkpoint's own, with the checkpoint's eval
    pipeline, at ``cfg.split`` (default: the dataset's val split); returns (dataset, name)."""
    chosen = cfg.get("dataset")
    if chosen is not None:
        block = OmegaConf.to_container(chosen, resolve=True)
    else:
        block = dict(bundle.dataset.get("config") or {})
        if not block:
            raise ConfigError(f"{bundle.source} does not say which dataset it was trained on; pass dataset=NAME "
                              "(conf/dataset/) and dataset.root=DIR")
    name = block.pop("name")
    split = cfg.split or block.get("val_split") or "val"
    try:
        transform = build_transforms(bundle.eval_pipeline, in_channels=input_channels(bundle.model))
        dataset = build_dataset(name, split=split, transform=transform, **block)
    except (TypeError, ValueError) as e:  # the dataset's constructor refused the block's values
        raise ConfigError(str(e)) from None
    check_same_length(dataset, name, split)
    if len(dataset) == 0:
        raise ConfigError(f"dataset {name!r} split {split!r} holds no images")
    return dataset, name


def check_same_length(dataset, name: str, split: str) -> None:
    """Every process found as many images as every other (a collective; nothing in a single process). Each builds
    the dataset itself, and machines that see different files would split different lists: images left out or
    scored twice, metrics silently wrong."""
    counts = gather_to_all(len(dataset))
    if len(set(counts)) > 1:
        seen = "; ".join(f"rank {rank}: {count}" for rank, count in enumerate(counts))
        raise ConfigError(f"the processes see different numbers of images in dataset {name!r} split {split!r} "
                          f"({seen}); every machine must see the same files: put dataset.root on a filesystem all "
                          "of them share")


def evaluate_job(cfg: DictConfig, output_dir: str | Path | None = None) -> dict:
    """Rebuild the model from ``cfg.checkpoint`` alone, evaluate it, print the per-class table and write
    ``metrics.json`` and ``confusion.png`` to ``cfg.output_dir`` (default: Hydra's run directory). Started as
    several processes (torchrun, srun), each evaluates its share of the images and rank 0 writes the files."""
    device, world = start_processes(cfg.device, cfg.process_timeout)
    bundle = load_bundle(cfg.checkpoint)
    dataset, name = build_eval_dataset(cfg, bundle)
    min_size = min_input_size(bundle.model)
    with config_values("inference options"):
        infer = build_infer(**infer_options(cfg, bundle), min_size=min_size, max_batch=cfg.batch_size)
    output_dir = main_process_directory(output_dir or cfg.output_dir)
    logger.info("evaluating %s on %s (%d images%s), inference: %s", bundle.source, name, len(dataset),
                f" across {world} processes" if world > 1 else "", describe_infer(infer))
    result = evaluate_model(
        bundle, dataset, infer, device, amp_dtype=resolve_amp(cfg.amp, device), batch_size=cfg.batch_size,
        num_workers=resolve_num_workers(cfg.num_workers), output_dir=output_dir, save_predictions=cfg.save_predictions,
        dataset_name=name, progress=cfg.progress, channels_last=device.type == "cuda",
        report=bool(cfg.get("report", False)), report_images=int(cfg.get("report_images", 8)),
    )
    if not is_main_process():
        return result
    print(format_metrics_table(result))
    print(f"metrics: {Path(output_dir) / 'metrics.json'}")
    if "report" in result:
        print(f"report: {result['report']} (per image: {Path(output_dir) / 'per_image.csv'})")
    return result
