"""The iteration-based training loop: AMP, exact resume, validation; progress, the loggers, ``metrics.json`` and
checkpoints hang off it as hooks (:mod:`segdense.engine.hooks`)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from segdense.errors import ConfigError, TrainingDivergedError
from segdense.metrics import SegmentationMetrics, ThresholdSearch, format_metrics_table
from segdense.tasks import MulticlassTask, Task
from segdense.models.builder import upgrade_model_config
from segdense.runtime import autocast_context, evaluate_loader, load_checkpoint, resolve_amp, resolve_device
from segdense.version import __version__

from . import checkpoint as ckpt
from .distributed import is_main_process, world_size
from .hooks import CheckpointHook, Hook, LoggerHook, MetricsFileHook, ProgressHook, as_hook
from .loggers import Logger
from .early_stopping import EarlyStopping
from .ema import WeightEMA
from .loss_log import LossLogHook
from .preemption import DEFAULT_STOP_SIGNALS, Preempted, StopSignals
from .sampler import ResumableSampler, SeededDataset

logger = logging.getLogger("segdense.train")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How to train: the run's numbers, checked together when made (one :class:`ConfigError` lists them all).

    ``val_interval``/``checkpoint_interval`` 0: validate only at the end / save with each validation.
    ``accumulate``: micro-batches of ``batch_size`` per optimizer step (an iteration is one optimizer step).
    ``channels_last``: ``auto`` runs the whole model channels-last on CUDA (on CPU the backbone converts its input
    itself), True everywhere, False nowhere. With fp16, after ``max_skipped_steps`` consecutive steps skipped for
    non-finite losses or gradients the run stops.
    """

    iterations: int
    batch_size: int
    accumulate: int = 1
    val_interval: int = 0
    checkpoint_interval: int = 0
    log_interval: int = 20
    num_workers: int = 0
    device: str | torch.device = "auto"
    amp: str | bool = "auto"
    channels_last: str | bool = "auto"
    grad_clip: float | None = None
    compile: bool = False
    seed: int = 0
    max_skipped_steps: int = 50

    def __post_init__(self) -> None:
        problems = [f"{key} must be positive, got {getattr(self, key)}" for key in
                    ("iterations", "batch_size", "accumulate", "log_interval",
                                                                 "max_skipped_steps") if getattr(self, key) < 1]
        problems += [f"{key} must be >= 0, got {getattr(self, key)}" for key in
                     ("val_interval", "checkpoint_interval", "num_workers") if getattr(self, key) < 0]
        if self.amp not in ("auto", "off", "bf16", "fp16", True, False):
            problems.append(f"amp must be one of auto, off, bf16, fp16; got {self.amp!r}")
        if self.channels_last not in ("auto", True, False):
            problems.append(f"channels_last must be auto, true or false; got {self.channels_last!r}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be positive or null, got {self.grad_clip}")
        if not isinstance(self.device, torch.device) and self.device != "auto":
            try:
                resolve_device(self.device)
            except ConfigError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError("invalid training settings:\n  - " + "\n  - ".join(problems))


class Trainer:
    """Trains ``model`` for ``settings.iterations`` steps on ``train_set``, validating on ``val_loader``.

    Everything is passed in built: the model (from :func:`segdense.build_model`, with its ``model_config``), the
    criterion, the optimizer over the model's parameters and its scheduler. ``run_dir`` receives
    ``checkpoints/{last,best}.pt`` and ``metrics.json`` (rank 0 only); rank 0 logs metrics to ``loggers``
    (:mod:`segdense.engine.loggers`; opened and closed by the caller). ``dataset_info`` (name,
    config, class names, palette) is stored in the checkpoints; class names and palette default to the training
    set's. ``hooks`` run after the built-in ones (:mod:`segdense.engine.hooks`). ``early_stop`` ends the run when a
    validation metric stops improving (:mod:`segdense.engine.early_stopping`). ``ema`` keeps an average of the
    weights (:mod:`segdense.engine.ema`): validation, ``best.pt`` and a checkpoint's ``model`` are then the
    average's, and ``raw_model`` holds the trained weights a resumed run continues from. ``stop_signals`` (SIGTERM and
    SIGUSR1; ``()``: none) stop :meth:`fit` cleanly after the step in progress (:mod:`segdense.engine.preemption`).

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
        val_loader: DataLoader | None,
        settings: TrainSettings,
        run_dir: str | os.PathLike,
        dataset_info: dict | None = None,
        config: dict | None = None,
        hooks: Sequence[Hook | Callable[["Trainer", int], None]] = (),
        stop_signals: Sequence[int] = DEFAULT_STOP_SIGNALS,
        task: Task | None = None,
        loggers: Sequence[Logger] = (),
        early_stop: EarlyStopping | None = None,
        ema: WeightEMA | None = None,
    ) -> None:
        self.settings = s = settings
        self.device = resolve_device(s.device) if not isinstance(s.device, torch.device) else s.device
        self.amp_dtype = resolve_amp(s.amp, self.device)
        self.model, self.train_model, self.ddp, self.channels_last = self._place(model)
        self.model_config = dict(getattr(model, "model_config", {}))
        self.ema = ema or WeightEMA()
        self.ema.bind(self.model)
        self.criterion = criterion.to(self.device)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.train_set, self.val_loader = train_set, val_loader
        self.run_dir = Path(run_dir)
        info = dict(dataset_info or {})
        self.class_names = list(info.pop("class_names", None) or getattr(train_set, "class_names", []))
        self.palette = [tuple(c) for c in (info.pop("palette", None) or getattr(train_set, "palette", ()))]
        self.dataset_info, self.config = info, config or {}
        self.task = task if task is not None else MulticlassTask(self.class_names)
        self.is_main = is_main_process()
        self._start_run_state()
        self.early_stop = early_stop or EarlyStopping()
        # early stopping decides before the checkpoint and metrics.json are written for the same validation
        self.hooks = [self.ema, ProgressHook(self), LossLogHook(), self.early_stop, CheckpointHook(),
                      MetricsFileHook()]
        if loggers and self.is_main:
            self.hooks.append(LoggerHook(loggers))
        self.hooks += [as_hook(h) for h in hooks]
        self.stop_signals = tuple(stop_signals)

    def _start_run_state(self) -> None:
        """The counters and records of a run that has not trained yet (a resume then loads its own)."""
        self.iteration, self.best_miou, self.best_iteration = 0, -1.0, 0
        self.skipped_steps = self.consecutive_skips = 0
        self.history: list[dict] = []
        self.train_seconds = 0.0  # wall time in training steps (data included), not in validation or saving
        self.loss_history: list[float] = []  # this process's loss at every iteration run here
        self.crop: tuple = ()  # the training crop last seen, for the out-of-memory message
        self.val_preview: tuple | None = None  # the first validation batch's images, masks and predictions
        self.stop_reason: str | None = None  # why the run ends before settings.iterations (set by early_stop)

    def _place(self, model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module | None, bool]:
        """(the model on the device, the module to train: DDP- and compile-wrapped as asked, the DDP module or None,
        channels-last on)."""
        backbone = getattr(model, "backbone", None)
        if self.settings.channels_last is False and hasattr(backbone, "channels_last"):
            backbone.channels_last = False  # also off where the backbone would switch it on itself (CPU auto)
        channels_last = self.settings.channels_last
        channels_last = self.device.type == "cuda" if channels_last == "auto" else bool(channels_last)
        model = model.to(self.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        train_model = ddp = None
        if world_size() > 1:
            ddp_device = [self.device.index or 0] if self.device.type == "cuda" else None
            train_model = ddp = nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)
        train_model = train_model or model
        if self.settings.compile:
            train_model = torch.compile(train_model)
        return model, train_model, ddp, channels_last

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "model": self.evaluated_model.state_dict(),
            **({"raw_model": self.model.state_dict()} if self.ema.enabled else {}),
            "model_config": self.model_config,
            "dataset": {**self.dataset_info, "class_names": self.class_names,
                        "palette": [list(c) for c in self.palette]},
            "task": self.task.to_config(),
            "iteration": self.iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "best_miou": self.best_miou,
            "best_iteration": self.best_iteration,
            "early_stop": self.early_stop.state_dict(),
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "config": self.config,
            "segdense_version": __version__,
        }

    def resume_from(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG states and the iteration."""
        state = load_checkpoint(path, map_location=self.device)
        if upgrade_model_config(state["model_config"]) != upgrade_model_config(self.model_config):
            raise ConfigError(
                f"checkpoint {path} was trained with model {state['model_config']}, but this run "
                f"builds {self.model_config}; resume with the same model settings"
            )
        self.model.load_state_dict(state.get("raw_model", state["model"]))
        if self.ema.enabled and "raw_model" in state:
            self.ema.module.load_state_dict(state["model"])
        else:  # a checkpoint without an average: it starts at the weights resumed
            self.ema.bind(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.best_iteration = int(state.get("best_iteration", 0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.early_stop.load_state_dict(state.get("early_stop", {}))
        if self.early_stop.exhausted and self.iteration < self.settings.iterations:
            self.stop_reason = self.early_stop.reason()
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.task.choose_threshold and "task" in state:  # the threshold the last validation chose
            self.task.threshold = float(state["task"]["threshold"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        """Train to ``settings.iterations`` (from the resumed iteration, if any), or until ``early_stop`` ends the
        run (``stop_reason`` says why), and return the last validation metrics. A stop signal (``stop_signals``)
        ends the run after the step in progress: ``last.pt`` is saved
        at that iteration and :class:`Preempted` raised; the previous signal handlers are back by then."""
        result: dict = {}
        start_iteration = self.iteration
        try:
            with StopSignals(self.stop_signals, self.device) as stop:
                loader = iter(self._train_loader())  # after the handlers: forked loader workers keep them too
                while self.iteration < self.settings.iterations and self.stop_reason is None:
                    result = self._iteration(loader) or result
                    signum = stop.received()  # every rank, every step: they stop after the same iteration
                    if signum and self.iteration < self.settings.iterations and self.stop_reason is None:
                        raise self._preempted(signum)
        finally:
            self._call("on_end")
        if self.iteration == start_iteration and self.val_loader is not None:
            result = self.validate()  # nothing left to train: report the checkpoint's metrics
        if self.skipped_steps:
            logger.warning("%d steps were skipped for non-finite fp16 losses or gradients", self.skipped_steps)
        return result

    def _iteration(self, loader) -> dict | None:
        """One step and its hooks; the validation metrics when validation was due."""
        step_start = time.perf_counter()
        logged = self._step(loader)
        self.scheduler.step()
        self.iteration += 1
        self.train_seconds += time.perf_counter() - step_start
        if logged is not None:
            self.loss_history.append(logged["loss"])
        self._call("on_step", logged, self.settings.batch_size * self.settings.accumulate * world_size())
        result = None
        if self.val_loader is not None and self.due(self.settings.val_interval):
            result = self.validate()
            self._call("on_validation", result)
        self._call("after_iteration")
        return result

    def _preempted(self, signum: int) -> Preempted:
        """``last.pt`` at this iteration (written by rank 0 while the others wait), as the exception to raise."""
        CheckpointHook.save(self, ckpt.LAST)
        if world_size() > 1:
            torch.distributed.barrier()
        return Preempted(signum, self.iteration, self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST)

    def due(self, interval: int) -> bool:
        """Whether the iteration just finished is a multiple of ``interval`` (0: never) or the last one (the
        run's end, or an early stop)."""
        return ((interval > 0 and self.iteration % interval == 0) or self.iteration == self.settings.iterations
                or self.stop_reason is not None)

    def _call(self, point: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    def _train_loader(self) -> DataLoader:
        s = self.settings
        rank = torch.distributed.get_rank() if world_size() > 1 else 0
        # The sampler's batch is the optimizer step's (every micro-batch of it), so a position in the stream, and a
        # resumed run, depend on the iteration alone.
        sampler = ResumableSampler(len(self.train_set), s.batch_size * s.accumulate, seed=s.seed,
                                   start_iteration=self.iteration,
                                   rank=rank, world_size=world_size())
        return DataLoader(
            SeededDataset(self.train_set), batch_size=s.batch_size, sampler=sampler, num_workers=s.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=True, persistent_workers=s.num_workers > 0,
            # Its own generator: creating the iterator must not draw from the global RNG, whose
            # state (dropout) a resumed run restores from the checkpoint.
            generator=torch.Generator().manual_seed(s.seed),
        )

    def _step(self, loader) -> dict[str, float] | None:
        """One optimizer step over ``accumulate`` micro-batches; the loss and its terms (their mean over the
        micro-batches), or None for a skipped fp16 step."""
        try:
            return self._update(loader)
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(
                f"CUDA out of memory at iteration {self.iteration + 1} with batch_size={self.settings.batch_size} "
                f"and crops of {self.crop}: lower batch_size (accumulate keeps the batch an "
                "optimizer step sees) or crop_size, or set backbone.memory_efficient=true"
            ) from e

    def _micro_batch(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = next(loader)[:2]
        self.crop = tuple(images.shape[-2:])
        images, masks = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks

    def _update(self, loader) -> dict[str, float] | None:
        k = self.settings.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(k):
            images, masks = self._micro_batch(loader)
            # DDP all-reduces the gradients in the last micro-batch's backward only: the others just add up.
            with self.ddp.no_sync() if self.ddp is not None and micro < k - 1 else contextlib.nullcontext():
                with autocast_context(self.device, self.amp_dtype):
                    loss, terms = self.criterion(self.train_model(images), masks)
                if not torch.isfinite(loss):
                    self._non_finite(loss)  # fp16: the step is skipped
                    for _ in range(micro + 1, k):  # the stream stays in step: this iteration's batches are used up
                        next(loader)
                    return None
                self.scaler.scale(loss / k).backward()  # the mean over the optimizer step's batch
            for key, value in {"loss": loss, **terms}.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value) / k
        if self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:  # the scaler found inf gradients
            self._skipped()
        else:
            self.consecutive_skips = 0
        return totals

    def _non_finite(self, loss: torch.Tensor) -> None:
        """A skipped step under fp16 (as the scaler skips one for inf gradients); otherwise the run stops."""
        if not self.scaler.is_enabled():
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at iteration {self.iteration + 1}; training stopped "
                f"(last good checkpoint: {self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}). "
                "Try a lower lr, grad_clip, or amp=off."
            )
        self._skipped()

    def _skipped(self) -> None:
        self.skipped_steps += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.settings.max_skipped_steps:
            raise TrainingDivergedError(
                f"{self.consecutive_skips} consecutive fp16 steps were skipped for non-finite losses or gradients, "
                f"the last at iteration {self.iteration + 1}; training stopped (last good checkpoint: "
                f"{self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST}). Try amp=bf16 or amp=off, a lower lr, or grad_clip."
            )

    # ------------------------------------------------------------------ validation
    @property
    def evaluated_model(self) -> nn.Module:
        """The weights validation scores and checkpoints hold as ``model``: the EMA's when there is one."""
        return self.ema.module if self.ema.enabled else self.model

    def _evaluate(self, model: nn.Module, on_first_batch=None) -> dict:
        """The task's metrics and the validation loss of ``model``; a binary task with ``threshold=auto`` searches
        the threshold that maximises IoU (:class:`~segdense.metrics.ThresholdSearch`), the metrics are those at it."""
        if self.task.choose_threshold:  # the search takes the logits and makes the labels itself
            metrics, labels = ThresholdSearch(self.task, device=self.device), _logits_as_they_are
        else:
            metrics = SegmentationMetrics(len(self.class_names), self.class_names, device=self.device, task=self.task)
            labels = self.task.labels
        return evaluate_loader(model, self.val_loader, metrics, self.device, self.amp_dtype, self.channels_last,
                               on_first_batch=on_first_batch, labels=labels,
                               loss=lambda logits, masks: self.criterion(logits, masks)[0])

    def validate(self) -> dict:
        """Metrics of :attr:`evaluated_model` on the validation loader (with EMA, the trained weights' under
        ``raw``); recorded in ``history`` (and as the best, when they are). With ``threshold=auto`` the task takes
        the threshold this validation chose."""
        choose = self.task.choose_threshold

        def keep_first(images, masks, prediction):
            if masks.dim() == 3:  # class maps to draw (not multilabel bands); a search's at the previous threshold
                labelled = self.task.labels(prediction) if prediction.is_floating_point() else prediction
                self.val_preview = (images[:4].float().cpu(), masks[:4].cpu(), labelled[:4].cpu())

        result = self._evaluate(self.evaluated_model, keep_first)
        if choose:
            self.task.threshold = result["threshold"]
            if self.is_main:
                logger.info("threshold chosen on validation: %.3f (foreground IoU %.4f)", self.task.threshold,
                            result["mIoU"])
        if self.ema.enabled:
            raw = self._evaluate(self.model)
            result["raw"] = {key: raw[key] for key in ("mIoU", "mAcc", "aAcc", "loss")}
        self.history.append({
            "iteration": self.iteration, "mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"],
            "loss": result["loss"], **({"raw": result["raw"]} if "raw" in result else {}),
            "IoU": [c["IoU"] for c in result["per_class"]],  # per class, for the training report
            "train_seconds": round(self.train_seconds, 3),
            **({"threshold": result["threshold"]} if choose else {}),
        })
        if result["mIoU"] > self.best_miou:
            self.best_miou, self.best_iteration = result["mIoU"], self.iteration
        if self.is_main:
            logger.info("validation at iteration %d%s\n%s\nvalidation loss %.4f%s", self.iteration,
                        " (EMA weights)" if self.ema.enabled else "", format_metrics_table(result), result["loss"],
                        "; trained weights: mIoU {mIoU:.4f}, loss {loss:.4f}".format(**result["raw"])
                        if "raw" in result else "")
        return result


def _logits_as_they_are(logits: torch.Tensor) -> torch.Tensor:
    return logits
