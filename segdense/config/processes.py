"""Starting a tool's processes: one, or several that a launcher started (torchrun, SLURM's ``srun``), found the same
way for training, evaluation and prediction (:mod:`segdense.engine.launchers`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from segdense.engine.distributed import broadcast_object, cuda_index, init_distributed
from segdense.runtime import is_main_process, resolve_device


def start_processes(device: str) -> tuple[torch.device, int]:
    """(this process's device, the number of processes). Joins the process group when a launcher started several
    (NCCL on CUDA, gloo on CPU; each process on CUDA takes its local GPU); on ranks other than 0 the ``segdense``
    loggers then show warnings and errors only."""
    device = resolve_device(device)
    _, local_rank, world = init_distributed(device.type)
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
