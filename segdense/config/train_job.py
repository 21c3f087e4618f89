"""``train(cfg)``: turns a composed training configuration into a run (tools/train.py calls it)."""
from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from segdense.backbones.efficient_block import sync_dense_layer_norms
from segdense.data import build_dataloader, build_dataset, build_transforms, resolve_num_workers, validate_dataset
from segdense.data.statistics import class_statistics
from segdense.engine import Trainer, TrainSettings, build_optimizer, build_scheduler, find_last_checkpoint
from segdense.engine.checkpoint import init_model_weights
from segdense.engine.loggers import LOGGERS, flatten_config, git_commit, open_loggers, tracked_run
from segdense.engine.early_stopping import EarlyStopping
from segdense.engine.ema import WeightEMA
from segdense.engine.distributed import check_same_start
from segdense.errors import ConfigError, config_values
from segdense.losses import build_criterion
from segdense.models import build_model
from segdense.reports.training import write_training_report
from segdense.runtime import is_main_process
from segdense.tasks import Task, build_task

from .group_keys import validate_config
from .model_checks import check_model_inputs
from .overrides import command_line_keys
from .processes import main_process_directory, start_processes

logger = logging.getLogger("segdense.train")


def model_config(cfg: DictConfig, num_classes: int, in_channels: int = 3) -> dict:
    """``build_model`` arguments: the backbone and head blocks as they are, the backbone's ``in_channels`` the
    band count of the dataset's images (an explicit ``backbone.in_channels`` must agree with it)."""
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    given = backbone.get("in_channels")
    if given is not None and int(given) != in_channels:
        raise ConfigError(f"backbone.in_channels={given}, but the dataset's images have {in_channels} band(s) "
                          "(after dataset.bands); leave backbone.in_channels out, it follows from the dataset")
    if in_channels != 3:
        backbone["in_channels"] = in_channels
    return dict(backbone=backbone, head=OmegaConf.to_container(cfg.head, resolve=True), num_classes=num_classes,
                aux_loss=cfg.aux_loss)


def dataset_bands(train_set, val_set) -> int:
    """The band count of the training images (its first image, after ``dataset.bands``), which every image of
    both splits must have: the pipelines refuse any other, naming the file."""
    if len(train_set) == 0:
        return 3
    image = train_set.load_image(0)
    bands = image.shape[2] if image.ndim == 3 else 1
    for dataset in (train_set, val_set):
        if hasattr(dataset.transform, "in_channels"):
            dataset.transform.in_channels = bands
    return bands


def build_datasets(cfg: DictConfig):
    """(train_set, val_set) with the augmentation pipelines of ``cfg.augmentation``."""
    block = OmegaConf.to_container(cfg.dataset, resolve=True)
    aug = OmegaConf.to_container(cfg.augmentation, resolve=True)
    missing = [key for key in ("train_split", "val_split") if not block.get(key)]
    if missing:
        raise ConfigError(f"dataset.{missing[0]} is missing (the split to {missing[0].split('_')[0]} on)")
    train_split, val_split = block.pop("train_split"), block.pop("val_split")
    normalize = block.pop("normalize", None)
    train_set = build_dataset(split=train_split, **block,
                              transform=build_transforms(aug["train"], seed=cfg.seed, normalize=normalize))
    val_set = build_dataset(split=val_split, transform=build_transforms(aug["eval"], normalize=normalize), **block)
    return train_set, val_set


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch. ``deterministic`` picks PyTorch's deterministic kernels where they exist;
    an op that has none only warns (``warn_only=True``), because the heads' bilinear upsampling has no
    deterministic CUDA backward and a strict mode would refuse every CUDA run. :func:`determinism_note` says
    what this guarantees."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def determinism_note(deterministic: bool, device: torch.device) -> str:
    """What ``deterministic`` guarantees on ``device``, for the summary screen (docs/training.md says the same)."""
    if not deterministic:
        return "off: seeded, but runs may differ in the last bits (deterministic=true to pin them)"
    if device.type == "cuda":
        return ("on: deterministic kernels where PyTorch has them; ops without one (bilinear upsampling backward, "
                "adaptive pooling backward) only warn, so two CUDA runs may still differ slightly")
    return ("on: a rerun, or a killed and resumed run, gives bit-identical weights on the same CPU model with the "
            "same thread count and package versions; another CPU model may end slightly differently")


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from; refuses to start over a run dir that already has one."""
    existing = find_last_checkpoint(run_dir)
    if resume in (None, "", "null"):
        if existing is not None:
            raise ConfigError(
                f"{run_dir} already holds a training run ({existing}); pass resume=auto to continue it, "
                "or choose another hydra.run.dir (nothing was overwritten)"
            )
        return None
    if resume == "auto":
        if existing is None:
            logger.info("resume=auto: no checkpoint in %s yet, starting a new run", run_dir)
        return existing
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint file")
    return path


def resolve_class_weight(spec, train_set) -> tuple[list[float] | None, str]:
    """``loss.class_weight`` as numbers, and how they were chosen: None, a list (checked against the number of
    classes), ``auto``: clipped median-frequency weights from every mask of the training split, or the name of
    weights the dataset publishes (``named_class_weights``, e.g. CamVid's ``segnet``)."""
    if spec is None:
        return None, ""
    named = dict(getattr(train_set, "named_class_weights", {}))
    if isinstance(spec, str) and spec in named:
        return [float(w) for w in named[spec]], f"{spec}: published with the dataset"
    if spec == "auto":
        stats = class_statistics(train_set)
        missing = stats.missing_classes()
        if missing:
            logger.warning("class_weight=auto: classes %s never occur in the training split; they get weight 1",
                           missing)
        return stats.class_weights(), f"auto: median frequency over {stats.num_images} training masks"
    if isinstance(spec, str) or not all(isinstance(w, (int, float)) for w in spec):
        offered = f"the dataset's named weights ({', '.join(sorted(named))}), " if named else ""
        raise ConfigError(f"loss.class_weight must be null, auto, {offered}or a list of one non-negative number per "
                          f"class; got {spec!r}")  # the criterion checks the numbers themselves
    weights = [float(w) for w in spec]
    if len(weights) != train_set.num_classes:
        raise ConfigError(f"loss.class_weight has {len(weights)} numbers but the dataset has "
                          f"{train_set.num_classes} classes ({', '.join(train_set.class_names)})")
    return weights, "given"


def describe_loss(terms, class_weight: list[float] | None, how: str, class_names) -> str:
    """The loss line of the summary: the terms with their weights, and the class weights per class name."""
    text = " + ".join(f"{t.get('weight', 1.0):g}*{t['name']}" for t in terms)
    if class_weight is not None:
        text += f"; class weights ({how}): " + ", ".join(
            f"{name} {w:.3g}" for name, w in zip(class_names, class_weight))
    return text


def describe_weights(cfg: DictConfig, resume_path: Path | None) -> str:
    """Where the run's first weights come from, for the summary screen: a run without ``backbone.pretrained``
    starts from random weights, which the published ImageNet-initialised recipes do not."""
    if resume_path is not None:
        return f"resumed from {resume_path}"
    if cfg.get("init_from"):
        return f"the whole model from {cfg.init_from} (init_from)"
    pretrained = cfg.backbone.get("pretrained")
    if pretrained:
        return f"backbone from {pretrained}, head random"
    return "random (backbone.pretrained not set)"


# Backbone families trained by their authors with another optimizer than the default SGD: (name prefix, optimizer,
# what the recipe carries, the experiment per backbone name, and the one for the others of the family).
BACKBONE_RECIPES = [
    ("rdnet_", "adamw", "AdamW with layer decay", {"rdnet_small": "upernet_rdnet_small_ade20k",
                                                   "rdnet_base": "upernet_rdnet_base_ade20k"},
     "upernet_rdnet_tiny_ade20k"),
    ("fcdensenet", "rmsprop", "RMSprop", {}, "fcdensenet103_camvid"),
]


def recipe_note(backbone: str, optimizer: str) -> str:
    """One line when ``backbone`` has a recipe of its own that uses another optimizer than ``optimizer``."""
    for prefix, own, carries, experiments, default in BACKBONE_RECIPES:
        if backbone.startswith(prefix) and optimizer != own:
            return (f"{backbone} is trained with {carries} by its authors, this run with {optimizer}: "
                    f"experiment={experiments.get(backbone, default)} carries that recipe")
    return ""


def summary(model, train_set, val_set, device, amp_dtype, batch_size: int, world: int, cfg: DictConfig,
            loss: str = "", weights: str = "") -> str:
    params = sum(p.numel() for p in model.parameters())
    mc = model.model_config
    names = list(train_set.class_names)
    classes = ", ".join(names) if len(names) <= 12 else ", ".join(names[:10]) + f", ... ({len(names)} in all)"
    decay = cfg.optimizer.get("layer_decay")
    amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    if cfg.channels_last is False:
        layout = "NCHW"
    elif cfg.channels_last is True or device.type == "cuda":
        layout = "channels-last"
    else:
        layout = "channels-last backbone"  # auto on CPU: DenseNet(channels_last=None)
    return "\n".join([
        "segdense training",
        f"  model     {mc['backbone']['name']} + {mc['head']['name']}, output stride {model.backbone.output_stride}"
        f"{', aux head' if mc['aux_loss'] else ''}"
        f"{', memory-efficient' if mc['backbone'].get('memory_efficient') else ''}"
        f" — {params:,} parameters",
        *([f"  weights   {weights}"] if weights else []),
        f"  data      {cfg.dataset.name}: {len(train_set)} train / {len(val_set)} val images, "
        f"{train_set.num_classes} classes ({classes}), task {cfg.task.name}",
        f"  schedule  {cfg.iterations} iterations, batch {batch_size} x {world} process(es)"
        f"{f' x {cfg.accumulate} accumulated' if cfg.accumulate > 1 else ''} = {batch_size * world * cfg.accumulate}, "
        f"crop {list(cfg.crop_size)}, {cfg.optimizer.name} lr {cfg.lr}"
        f"{f' (stage-wise decay {decay})' if decay is not None else ''}, {cfg.scheduler.name}",
        *([f"  recipe    {note}"] if (note := recipe_note(mc["backbone"]["name"], cfg.optimizer.name)) else []),
        *([f"  loss      {loss}"] if loss else []),
        f"  device    {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, AMP {amp}, {layout}",
        f"  determinism {determinism_note(cfg.deterministic, device)}",
    ])


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The trainer's settings from the top-level keys (checked together: one error lists every bad value)."""
    keys = [f.name for f in dataclasses.fields(TrainSettings) if f.name != "max_skipped_steps"]
    values = {key: cfg[key] for key in keys}
    values["num_workers"] = resolve_num_workers(values["num_workers"])
    return TrainSettings(**values)


def checked_datasets(cfg: DictConfig):
    """(train_set, val_set), the training split checked first as ``validate_data`` asks."""
    with config_values("dataset/augmentation"):
        train_set, val_set = build_datasets(cfg)
    if cfg.validate_data not in ("quick", "full", "off"):
        raise ConfigError(f"validate_data must be quick, full or off; got {cfg.validate_data!r}")
    if cfg.validate_data != "off" and is_main_process():
        report = validate_dataset(train_set, sample=None if cfg.validate_data == "full" else 64, seed=cfg.seed)
        if not report.ok:
            raise ConfigError(f"the training data has problems:\n{report.format()}")
    return train_set, val_set


def training_task(cfg: DictConfig, train_set) -> Task:
    """The task of ``cfg.task`` over the dataset's classes; a dataset whose masks belong to another task is one
    error that says which task to pick."""
    with config_values("task"):
        task = build_task(class_names=train_set.class_names, **OmegaConf.to_container(cfg.task, resolve=True))
    declared = getattr(train_set, "mask_task", None)
    if declared is not None and declared != task.name:
        raise ConfigError(f"dataset {cfg.dataset.name} has {declared} masks but task={task.name}; add task={declared}")
    return task


def training_model(cfg: DictConfig, num_classes: int, device: torch.device, world: int,
                   in_channels: int = 3) -> torch.nn.Module:
    """The model of the backbone and head blocks, its BatchNorms synced across processes."""
    with config_values("backbone/head"):
        model = build_model(**model_config(cfg, num_classes, in_channels))
    if model.model_config["backbone"].get("cuda_graphs"):
        if device.type != "cuda":
            raise ConfigError(f"backbone.cuda_graphs=true needs device=cuda (CUDA graphs), got device={device}")
        if world > 1:
            raise ConfigError("backbone.cuda_graphs=true trains in one process: BatchNorm statistics synced "
                              f"across the {world} processes are not captured in CUDA graphs")
    if world > 1 and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif world > 1 and model.model_config["backbone"].get("memory_efficient"):
        # gloo on CPU: PyTorch's SyncBatchNorm cannot run there, the memory-efficient dense blocks
        # all-reduce their own statistics, so their layers train on the global batch.
        sync_dense_layer_norms(model)
        logger.info("memory-efficient dense blocks: BatchNorm statistics synced across %d processes", world)
    return model


def initial_weights(init_from: str | None, model: torch.nn.Module, resume_path: Path | None) -> None:
    """Start from the model weights of the checkpoint ``init_from`` (a fine-tune: a new run with its own optimizer,
    schedule and iteration count). A run being resumed takes everything from its own checkpoint instead."""
    if not init_from:
        return
    if resume_path is not None:
        logger.info("init_from=%s not applied: this run resumes from %s", init_from, resume_path)
        return
    init_model_weights(model, init_from)
    logger.info("model weights initialised from %s", init_from)


def optimization(cfg: DictConfig, model: torch.nn.Module):
    """(optimizer, scheduler) from the optimizer and scheduler blocks, passed as they are."""
    with config_values("optimizer"):
        optimizer = build_optimizer(model=model, lr=cfg.lr, **OmegaConf.to_container(cfg.optimizer, resolve=True))
    with config_values("scheduler"):
        scheduler = build_scheduler(optimizer=optimizer, total_iterations=cfg.iterations,
                                    **OmegaConf.to_container(cfg.scheduler, resolve=True))
    return optimizer, scheduler


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None, hooks: Sequence[Any] = ()) -> dict:
    """Validate ``cfg``, build data, model, loss and optimizer, and train; returns the last
    validation metrics. ``run_dir`` defaults to Hydra's output directory. Rank 0 logs to the loggers of
    ``cfg.logger``, which record the run's end (finished, failed, killed) whatever it is."""
    validate_config(cfg)
    check_model_inputs(cfg, command_line_keys())
    settings = train_settings(cfg)
    device, world = start_processes(cfg.device)
    run_dir = main_process_directory(run_dir)  # every rank uses rank 0's directory
    resume_path = resolve_resume(cfg.resume, run_dir)
    loggers = open_loggers(list(cfg.logger), run_dir, logger_options(cfg), resume=resume_path is not None,
                           main_process=is_main_process())
    with tracked_run(loggers, run_dir):
        trainer = build_trainer(cfg, dataclasses.replace(settings, device=device), world, run_dir, resume_path,
                                hooks, loggers)
        return finish(cfg, trainer, trainer.fit())


def logger_options(cfg: DictConfig) -> dict[str, dict]:
    """Each backend's option block (``mlflow:``, ``wandb:``), as its constructor's keyword arguments."""
    return {name: OmegaConf.to_container(cfg[name], resolve=True) for name in LOGGERS.names() if name in cfg}


def build_trainer(cfg: DictConfig, settings: TrainSettings, world: int, run_dir: Path, resume_path: Path | None,
                  hooks: Sequence[Any], loggers: Sequence[Any]) -> Trainer:
    """Data, model, loss and optimizer built and the trainer resumed when asked; rank 0 writes ``config.yaml``,
    logs the parameters (the resolved configuration flattened, and the git commit) and the summary."""
    early_stop = EarlyStopping(**OmegaConf.to_container(cfg.early_stop, resolve=True))
    ema = WeightEMA(**OmegaConf.to_container(cfg.ema, resolve=True))
    seed_everything(cfg.seed, cfg.deterministic)
    train_set, val_set = checked_datasets(cfg)
    task = training_task(cfg, train_set)
    model = training_model(cfg, task.out_channels, settings.device, world, dataset_bands(train_set, val_set))
    initial_weights(cfg.init_from, model, resume_path)
    terms = OmegaConf.to_container(cfg.loss.terms, resolve=True)
    with config_values("loss"):
        class_weight, weight_source = resolve_class_weight(cfg.loss.get("class_weight"), train_set)
        criterion = build_criterion(terms, aux_weight=cfg.loss.aux_weight, num_classes=train_set.num_classes,
                                    class_weight=class_weight, task=task)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["loss"]["class_weight"] = class_weight  # the numbers used, also when they were chosen by `auto`
    with config_values("val_batch_size"):
        val_loader = build_dataloader(val_set, cfg.val_batch_size, train=False, num_workers=min(settings.num_workers, 2))
    trainer = Trainer(model, criterion, *optimization(cfg, model), train_set, val_loader, settings, run_dir,
                      config=config, hooks=hooks, loggers=loggers,
                      dataset_info={"name": cfg.dataset.name, "config": config["dataset"]}, task=task,
                      early_stop=early_stop, ema=ema)
    if resume_path is not None:
        trainer.resume_from(resume_path)
    check_same_start(trainer.iteration, resume_path)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        params = {**flatten_config(config), "git_commit": git_commit(Path(__file__).parent) or "unknown"}
        for lg in loggers:
            lg.log_params(params)
        loss = describe_loss(terms, class_weight, weight_source, train_set.class_names)
        logger.info("\n%s", summary(model, train_set, val_set, trainer.device, trainer.amp_dtype, cfg.batch_size, world,
                                     cfg, loss, describe_weights(cfg, resume_path)))
        logger.info("run directory: %s", run_dir)
    return trainer


def finish(cfg: DictConfig, trainer: Trainer, result: dict) -> dict:
    """The training report (when asked) and the closing line; returns ``result``."""
    run_dir = trainer.run_dir
    if cfg.report and is_main_process() and (run_dir / "metrics.json").is_file():
        try:
            logger.info("report: %s", write_training_report(run_dir))
        except Exception as exc:  # the run itself succeeded: say so, and how to retry the report
            logger.warning("could not write the training report (%s: %s); retry with python tools/report.py %s",
                           type(exc).__name__, exc, run_dir)
    if is_main_process():
        logger.info("ended at iteration %d of %d: %s", trainer.iteration, cfg.iterations,
                    trainer.stop_reason or "all iterations done")
    if is_main_process() and result:
        logger.info(
            "done: mIoU %.2f (best %.2f at iteration %d); checkpoints in %s",
            100 * result["mIoU"], 100 * trainer.best_miou, trainer.best_iteration, run_dir / "checkpoints",
        )
    return result
