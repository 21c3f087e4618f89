"""Process-group helpers: the launcher's environment (torchrun or SLURM) in, rank/world size out."""
from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from segdense.errors import CheckpointError, ProcessGroupError
from segdense.runtime import KILL_ON_BAD_EXIT, collective, gather_to_all, is_main_process, process_rank, torch_reason

from .attempt_store import attempt_store
from .launchers import Launch, detect_launch

__all__ = ["all_reduce_mean", "broadcast_object", "cleanup_distributed", "cuda_index", "init_distributed",
           "is_main_process", "rendezvous", "world_size"]

logger = logging.getLogger("segdense.train")
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


def init_distributed(device_type: str, timeout: datetime.timedelta = PROCESS_GROUP_TIMEOUT) -> tuple[int, int, int]:
    """Start the process group when launched as several processes, by torchrun or by SLURM's ``srun`` alone
    (:mod:`segdense.engine.launchers`): NCCL on CUDA, gloo on CPU. Logs the launcher found when there are several
    processes. Returns (rank, local_rank, world_size); (0, 0, 1) for a single process. ``timeout`` bounds the wait
    for every process to join, and each collective's wait for the others: a process that never joins gives one
    :class:`ProcessGroupError` after it."""
    launch = detect_launch(os.environ)
    if launch.world_size <= 1:
        return 0, 0, 1
    if launch.rank == 0:
        logger.info(launch.describe())
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(cuda_index(launch.local_rank))
        try:
            dist.init_process_group(backend, timeout=timeout, **rendezvous(launch, timeout))
        except (dist.DistError, TimeoutError) as e:  # the store's wait for the others, the connection to rank 0
            raise ProcessGroupError(
                f"rank {launch.rank} of {launch.world_size}: the processes did not all meet within "
                f"{timeout.total_seconds():g} s ({torch_reason(e)}); one was not started, or ended before it "
                f"joined, and its own log says why; {KILL_ON_BAD_EXIT}") from e
    return launch.rank, launch.local_rank, launch.world_size


def rendezvous(launch: Launch, timeout: datetime.timedelta = PROCESS_GROUP_TIMEOUT) -> dict:
    """How the processes meet: SLURM's rank 0 at ``tcp://MASTER_ADDR:MASTER_PORT`` (no torchrun exports it);
    under torchrun its environment, in a part of its store that belongs to this attempt alone
    (:mod:`segdense.engine.attempt_store`): the agent's store outlives a ``--max-restarts`` restart, and
    restarted workers would otherwise read an earlier attempt's addresses and fail to connect."""
    if launch.master_addr is not None:
        host = f"[{launch.master_addr}]" if ":" in launch.master_addr else launch.master_addr  # IPv6
        return dict(init_method=f"tcp://{host}:{launch.master_port}", rank=launch.rank, world_size=launch.world_size)
    if not dist.is_torchelastic_launched():
        return {}  # env:// as it is
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    return dict(store=attempt_store(store, rank, world, timeout), rank=rank, world_size=world)


def cuda_index(local_rank: int) -> int:
    """The CUDA device of this process: its local rank, or device 0 when the launcher shows each process
    only its own GPU (``srun --gpus-per-task=1``)."""
    return local_rank % max(torch.cuda.device_count(), 1)


def world_size() -> int:
    return process_rank()[1]


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (identity for a single process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    with collective("broadcast_object_list"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_start(iteration: int, resume_path: str | os.PathLike | None) -> None:
    """Every process starts at the same iteration from the same file. Each one finds ``last.pt`` itself; a run
    directory that differs between machines (node-local, or a stale view of a network filesystem) would make them
    train different steps, until one waits for the others in a collective."""
    starts = gather_to_all((iteration, None if resume_path is None else str(resume_path)))
    if len(set(starts)) > 1:
        seen = "; ".join(f"rank {rank}: iteration {it} ({path or 'no checkpoint'})"
                         for rank, (it, path) in enumerate(starts))
        raise CheckpointError(f"the processes would start from different checkpoints ({seen}); every machine must "
                              "see the same run directory: set hydra.run.dir to a folder on a filesystem all share")


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not dist.is_initialized():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
