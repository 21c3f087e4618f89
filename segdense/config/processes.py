"""Starting a tool's processes: one, or several that a launcher started (torchrun, SLURM's ``srun``), found the same
way for training, evaluation and prediction (:mod:`segdense.engine.launchers`)."""
from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Callable, TypeVar

import torch
from hydra.core.hydra_config import HydraConfig

from segdense.engine.distributed import PROCESS_GROUP_TIMEOUT, broadcast_object, cuda_index, init_distributed
from segdense.errors import ConfigError, UserError
from segdense.runtime import is_main_process, resolve_device

T = TypeVar("T")


def start_processes(device: str, timeout_s: float | None = None) -> tuple[torch.device, int]:
    """(this process's device, the number of processes). Joins the process group when a launcher started several
    (NCCL on CUDA, gloo on CPU; each process on CUDA takes its local GPU); on ranks other than 0 the ``segdense``
    loggers then show warnings and errors only. ``timeout_s`` (default: training's 30 minutes) bounds how long a
    process waits for the others, at the start and in each collective."""
    device = resolve_device(device)
    _, local_rank, world = init_distributed(device.type, process_timeout(timeout_s))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", cuda_index(local_rank))
    if not is_main_process():
        logging.getLogger("segdense").setLevel(logging.WARNING)
    return device, world


def main_process_directory(path: str | os.PathLike | None) -> Path:
    """``path`` (default: Hydra's run directory) as rank 0 has it, on every process: with the default, which
    contains the start time, each process would otherwise pick a folder of its own."""
    if path is None:
        path = HydraConfig.get().runtime.output_dir
    return Path(broadcast_object(str(path)))


def process_timeout(seconds: float | None) -> datetime.timedelta:
    """``process_timeout`` of the evaluation and prediction configs as a timedelta (None: training's default)."""
    if seconds is None:
        return PROCESS_GROUP_TIMEOUT
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ConfigError(f"process_timeout must be a number of seconds > 0; got {seconds!r}")
    return datetime.timedelta(seconds=seconds)


def main_process_result(compute: Callable[[], T]) -> T:
    """``compute()`` run by rank 0 alone, and its result (or the :class:`UserError` it raised) on every process: a
    collective. For what must be one thing everywhere, such as the list of input files, which processes that list
    it each for themselves can see differently (a network filesystem's views, files written meanwhile)."""
    result, error = None, None
    if is_main_process():
        try:
            result = compute()
        except UserError as e:
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result
