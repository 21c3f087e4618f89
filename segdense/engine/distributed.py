"""Process-group helpers: the launcher's environment (torchrun or SLURM) in, rank/world size out."""
from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from .launchers import detect_launch

logger = logging.getLogger("segdense.train")


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Start the process group when launched as several processes, by torchrun or by SLURM's ``srun`` alone
    (:mod:`segdense.engine.launchers`): NCCL on CUDA, gloo on CPU. Logs the launcher found. Returns (rank,
    local_rank, world_size); (0, 0, 1) for a single process."""
    launch = detect_launch(os.environ)
    if launch.rank == 0:
        logger.info(launch.describe())
    if launch.world_size <= 1:
        return 0, 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(cuda_index(launch.local_rank))
        options = dict(backend=backend, timeout=datetime.timedelta(minutes=30))
        if launch.master_addr is not None:  # SLURM: no torchrun to export the rendezvous
            host = f"[{launch.master_addr}]" if ":" in launch.master_addr else launch.master_addr  # IPv6
            options.update(init_method=f"tcp://{host}:{launch.master_port}", rank=launch.rank,
                           world_size=launch.world_size)
        dist.init_process_group(**options)
    return launch.rank, launch.local_rank, launch.world_size


def cuda_index(local_rank: int) -> int:
    """The CUDA device of this process: its local rank, or device 0 when the launcher shows each process
    only its own GPU (``srun --gpus-per-task=1``)."""
    return local_rank % max(torch.cuda.device_count(), 1)


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (identity for a single process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
