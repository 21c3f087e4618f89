"""The iteration-based training loop: AMP, checkpoints with exact resume, validation, logging."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from segdense.backbones.densenet import DenseNet
from segdense.backbones.resnet import ResNet
from segdense.errors import ConfigError, TrainingDivergedError
from segdense.metrics import SegmentationMetrics, format_metrics_table
from segdense.models.builder import upgrade_model_config

from . import checkpoint as ckpt
from .distributed import is_main_process, world_size
from .evaluate import autocast_context, evaluate
from .sampler import ResumableSampler, SeededDataset

logger = logging.getLogger("segdense.train")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but CUDA is not available; use device=cpu or auto")
    return dev


def resolve_amp(amp: str | bool, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on CUDA where supported, else fp16; off on CPU. Also ``off``/``bf16``/``fp16``."""
    amp = {True: "auto", False: "off"}.get(amp, amp)
    if amp == "off":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ConfigError(f"amp must be one of auto, off, bf16, fp16; got {amp!r}")


class Trainer:
    """Trains ``model`` for ``iterations`` steps on ``train_set`` and validates on ``val_set``.

    Everything is passed in built: the model (from :func:`segdense.build_model`, with its
    ``model_config``), the criterion, and optimizer/scheduler factories that take the (possibly
    wrapped) model's parameters. ``run_dir`` receives ``checkpoints/{last,best}.pt``,
    ``metrics.json`` and TensorBoard events (rank 0 only).

    With fp16 a step whose loss or gradients are not finite is skipped, as the gradient scaler does; after
    ``max_skipped_steps`` consecutive skipped steps the run stops with :class:`TrainingDivergedError` naming the
    iteration, before it writes checkpoints of a model that no longer trains.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_set: Dataset,
        val_set: Dataset | None,
        *,
        iterations: int,
        batch_size: int,
        run_dir: str | os.PathLike,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]] = (),
        val_loader_fn: Callable[[Dataset], DataLoader] | None = None,
        device: str | torch.device = "auto",
        amp: str = "auto",
        channels_last: str | bool = "auto",
        grad_clip: float | None = None,
        compile: bool = False,
        seed: int = 0,
        val_interval: int = 0,
        checkpoint_interval: int = 0,
        log_interval: int = 20,
        num_workers: int = 0,
        dataset_info: dict | None = None,
        config: dict | None = None,
        tensorboard: bool = True,
        hooks: Sequence[Callable[["Trainer", int], None]] = (),
        max_skipped_steps: int = 50,
    ) -> None:
        if iterations < 1:
            raise ValueError(f"iterations must be positive, got {iterations}")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.amp_dtype = resolve_amp(amp, self.device)
        # auto: the whole model channels-last on CUDA; on CPU the DenseNet backbone converts its
        # input itself (DenseNet/ResNet(channels_last=None)). False: channels-last nowhere.
        if channels_last is False:
            for m in model.modules():
                if isinstance(m, (DenseNet, ResNet)):
                    m.channels_last = False
        if channels_last == "auto":
            channels_last = self.device.type == "cuda"
        self.channels_last = bool(channels_last)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model_config = dict(getattr(model, "model_config", {}))
        self.train_model: nn.Module = self.model
        if world_size() > 1:
            ddp_device = [self.device.index or 0] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ddp_device)
        if compile:
            self.train_model = torch.compile(self.train_model)
        self.criterion = criterion.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_set, self.val_set = train_set, val_set
        self.val_loader_fn = val_loader_fn
        self.iterations = iterations
        self.batch_size = batch_size
        self.run_dir = Path(run_dir)
        self.class_names = list(class_names)
        self.palette = [tuple(c) for c in palette]
        self.grad_clip = grad_clip
        self.seed = seed
        self.val_interval = val_interval or iterations
        self.checkpoint_interval = checkpoint_interval or self.val_interval
        self.log_interval = max(1, log_interval)
        self.num_workers = num_workers
        self.dataset_info = dataset_info or {}
        self.config = config or {}
        self.hooks = list(hooks)
        self.is_main = is_main_process()
        self.iteration = 0
        self.best_miou = -1.0
        self.best_iteration = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.max_skipped_steps = max(1, int(max_skipped_steps))
        self.history: list[dict] = []
        self.train_seconds = 0.0  # wall time in training steps (data included), not in validation or saving
        self.loss_history: list[float] = []  # this process's loss at every iteration run here
        self.writer = None
        if tensorboard and self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        from segdense import __version__

        return {
            "model": self.model.state_dict(),
            "model_config": self.model_config,
            "dataset": {**self.dataset_info, "class_names": self.class_names, "palette": [list(c) for c in self.palette]},
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "best_miou": self.best_miou,
            "best_iteration": self.best_iteration,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "config": self.config,
            "segdense_version": __version__,
        }

    def resume_from(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG states and the iteration."""
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if upgrade_model_config(state["model_config"]) != self.model_config:
            raise ConfigError(
                f"checkpoint {path} was trained with model {state['model_config']}, but this run "
                f"builds {self.model_config}; resume with the same model settings"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.best_iteration = int(state.get("best_iteration", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def _save(self, name: str) -> None:
        if self.is_main:
            ckpt.save_checkpoint(self.state_dict(), self.run_dir / ckpt.CHECKPOINT_DIR / name)

    # ------------------------------------------------------------------ loop
    def _train_loader(self) -> DataLoader:
        rank = torch.distributed.get_rank() if world_size() > 1 else 0
        sampler = ResumableSampler(
            len(self.train_set), self.batch_size, seed=self.seed, start_iteration=self.iteration,
            rank=rank, world_size=world_size(),
        )
        return DataLoader(
            SeededDataset(self.train_set),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            persistent_workers=self.num_workers > 0,
            # Its own generator: creating the iterator must not draw from the global RNG, whose
            # state (dropout) a resumed run restores from the checkpoint.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _step(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float] | None:
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.amp_dtype):
            outputs = self.train_model(images)
            loss, terms = self.criterion(outputs, masks)
        if not torch.isfinite(loss):
            if self.scaler.is_enabled():  # fp16: skip the step, as the scaler does for inf grads
                self._skipped()
                return None
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at iteration {self.iteration + 1}; training stopped "
                f"(last good checkpoint: {self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}). "
                "Try a lower lr, grad_clip, or amp=off."
            )
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:  # the scaler found inf gradients
            self._skipped()
        else:
            self.consecutive_skips = 0
        logged = {"loss": loss.detach()}
        logged.update({k: v.detach() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in terms.items()})
        return logged

    def _skipped(self) -> None:
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.max_skipped_steps:
            raise TrainingDivergedError(
                f"{self.consecutive_skips} consecutive fp16 steps were skipped for non-finite losses or gradients, "
                f"the last at iteration {self.iteration + 1}; training stopped (last good checkpoint: "
                f"{self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}). Try amp=bf16 or amp=off, a lower lr, or grad_clip."
            )

    def fit(self) -> dict:
        """Train to ``iterations`` (from the resumed iteration, if any) and return the last
        validation metrics."""
        from tqdm import tqdm

        interactive = self.is_main and sys.stderr.isatty()
        bar = tqdm(total=self.iterations, initial=self.iteration, disable=not interactive, dynamic_ncols=True)
        loader = iter(self._train_loader())
        result: dict = {}
        window_start, window_images, window_iters = time.perf_counter(), 0, 0
        start_iteration = self.iteration
        try:
            while self.iteration < self.iterations:
                step_start = time.perf_counter()
                images, masks = next(loader)[:2]
                try:
                    logged = self._step(images, masks)
                except torch.cuda.OutOfMemoryError as e:
                    raise RuntimeError(
                        f"CUDA out of memory at iteration {self.iteration + 1} with batch_size="
                        f"{self.batch_size} and crops of {tuple(images.shape[-2:])}: lower batch_size or "
                        "crop_size, or set backbone.memory_efficient=true"
                    ) from e
                self.scheduler.step()
                self.iteration += 1
                self.train_seconds += time.perf_counter() - step_start
                if logged is not None:
                    self.loss_history.append(float(logged["loss"]))
                window_images += images.shape[0] * world_size()
                window_iters += 1
                lr = self.optimizer.param_groups[0]["lr"]
                if logged is not None and (self.iteration % self.log_interval == 0 or self.iteration == self.iterations):
                    values = {k: float(v) for k, v in logged.items()}
                    elapsed = time.perf_counter() - window_start
                    speed = window_images / max(elapsed, 1e-9)
                    self._log_train(values, lr, speed)
                    if not interactive and self.is_main:
                        eta = (self.iterations - self.iteration) * elapsed / window_iters
                        logger.info(
                            "it %d/%d  loss %.4f  lr %.2e  %.1f img/s  eta %s", self.iteration, self.iterations,
                            values["loss"], lr, speed, _format_seconds(eta),
                        )
                    window_start, window_images, window_iters = time.perf_counter(), 0, 0
                    bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                if self.val_set is not None and (self.iteration % self.val_interval == 0 or self.iteration == self.iterations):
                    result = self.validate()
                    if result["mIoU"] > self.best_miou:
                        self.best_miou, self.best_iteration = result["mIoU"], self.iteration
                        self._save(ckpt.BEST)
                    self._write_metrics(result)
                if self.iteration % self.checkpoint_interval == 0 or self.iteration == self.iterations:
                    self._save(ckpt.LAST)
                for hook in self.hooks:
                    hook(self, self.iteration)
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.flush()
        if self.iteration == start_iteration and self.val_set is not None:
            result = self.validate()  # nothing left to train: report the checkpoint's metrics
        if self.skipped_steps:
            logger.warning("%d steps were skipped for non-finite fp16 losses or gradients", self.skipped_steps)
        return result

    # ------------------------------------------------------------------ validation and logs
    def validate(self) -> dict:
        loader = self.val_loader_fn(self.val_set) if self.val_loader_fn else DataLoader(self.val_set, batch_size=1)
        metrics = SegmentationMetrics(len(self.class_names), self.class_names, device=self.device)
        grid = {}

        def keep_first(images, masks, prediction):
            grid["images"] = (images[:4].float().cpu(), masks[:4].cpu(), prediction[:4].cpu())

        result = evaluate(
            self.model, loader, metrics, self.device, self.amp_dtype, self.channels_last,
            on_first_batch=keep_first if self.writer is not None else None,
        )
        entry = {"iteration": self.iteration, "mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"],
                 "IoU": [c["IoU"] for c in result["per_class"]],  # per class, for the training report
                 "train_seconds": round(self.train_seconds, 3)}
        self.history.append(entry)
        if self.is_main:
            logger.info("validation at iteration %d\n%s", self.iteration, format_metrics_table(result))
        if self.writer is not None:
            for key in ("mIoU", "mAcc", "aAcc"):
                self.writer.add_scalar(f"val/{key}", result[key], self.iteration)
            for c in result["per_class"]:
                if not math.isnan(c["IoU"]):
                    self.writer.add_scalar(f"val_IoU/{c['name']}", c["IoU"], self.iteration)
            if grid and self.palette:
                from .visualize import comparison_grid

                self.writer.add_image("val/image_gt_pred", comparison_grid(*grid["images"], self.palette), self.iteration)
        return result

    def _log_train(self, values: dict[str, float], lr: float, speed: float) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, self.iteration)
        self.writer.add_scalar("train/lr", lr, self.iteration)
        self.writer.add_scalar("train/images_per_second", speed, self.iteration)
        if self.device.type == "cuda":
            self.writer.add_scalar("train/max_memory_allocated_MiB", torch.cuda.max_memory_allocated(self.device) / 2**20, self.iteration)

    def _write_metrics(self, result: dict) -> None:
        if not self.is_main:
            return
        summary = {
            "iteration": self.iteration,
            "best_mIoU": self.best_miou,
            "best_iteration": self.best_iteration,
            "last": {k: v for k, v in result.items() if k != "confusion"},
            "history": self.history,
        }
        path = self.run_dir / "metrics.json"
        tmp = path.with_name(".metrics.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
