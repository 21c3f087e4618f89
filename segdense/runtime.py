"""What running a model needs, for training and deployment alike: the device, mixed precision, checkpoint reading,
whole-image logits, the metric loop over a loader and this process's place among several (rank, gathering results
to rank 0). ``segdense.engine`` (training) and ``segdense.inference`` (deployment) both build on it; it imports
neither."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segdense.errors import CheckpointError, ConfigError, MissingFileError, ProcessGroupError
from segdense.tasks import class_argmax

Infer = Callable[[nn.Module, torch.Tensor], torch.Tensor]


class Metrics(Protocol):
    """What :func:`evaluate_loader` needs of a metric (:class:`segdense.metrics.SegmentationMetrics` is one)."""

    def reset(self) -> None: ...
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None: ...
    def compute(self) -> dict: ...


def process_rank() -> tuple[int, int]:
    """(this process's rank, the number of processes) in torch.distributed's default group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes shared files and prints summaries."""
    return process_rank()[0] == 0


def gather_to_main(obj) -> list | None:
    """Every process's ``obj`` (picklable), in rank order, on rank 0; None on the others; ``[obj]`` in a single
    process. A collective: every process calls it once, also one whose shard was empty."""
    rank, world = process_rank()
    if world == 1:
        return [obj]
    parts = [None] * world if rank == 0 else None
    with collective("gather_object"):
        dist.gather_object(obj, parts, dst=0)
    return parts


def gather_to_all(obj) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process; ``[obj]`` in a single process.
    A collective, like :func:`gather_to_main`, for checks that every process must fail together."""
    rank, world = process_rank()
    if world == 1:
        return [obj]
    found = [None] * world
    with collective("all_gather_object"):
        dist.all_gather_object(found, obj)
    return found


KILL_ON_BAD_EXIT = ("under srun, --kill-on-bad-exit=1 ends every process when one fails; torchrun does so itself "
                    "(docs/distributed.md)")


@contextlib.contextmanager
def collective(name: str):
    """Around a collective of the default process group: the failure torch reports when another process ended
    (its connection closed) or did not answer within the group's timeout becomes one
    :class:`~segdense.errors.ProcessGroupError` that names this process, the collective and what to look at."""
    try:
        yield
    except RuntimeError as e:  # gloo's and NCCL's errors alike (DistBackendError is one)
        rank, world = process_rank()
        if world == 1:
            raise
        raise ProcessGroupError(f"rank {rank} of {world}: lost the other processes in {name} ({torch_reason(e)}); "
                                "one of them ended, or did not get there within the process group's timeout "
                                "(tools/eval.py and tools/infer.py: process_timeout); "
                                "its own log says why; "
                                f"{KILL_ON_BAD_EXIT}") from e


def torch_reason(error: Exception) -> str:
    """The first line of a torch.distributed error, without the source location gloo puts in front of it."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).split(". This is typically")[0]


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; anything else as torch understands it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
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


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    """``torch.autocast`` to ``amp_dtype`` on ``device``, or nothing when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


CHECKPOINT_EXPECTED = ("expected a segdense checkpoint such as outputs/<run>/checkpoints/best.pt, "
                       "or a .safetensors export of one (tools/export.py format=safetensors)")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL_OPCODE = 0x80  # the first byte of a pickle (torch.save's legacy format)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a segdense checkpoint (``torch.load(weights_only=True)``). A missing file, a file that is no
    checkpoint, another program's checkpoint and a truncated one each give one :class:`CheckpointError` line
    naming the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}; {CHECKPOINT_EXPECTED}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": about a file we refuse anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, refused globals, not a torch file ...
        # torch's text advises turning weights_only off, which would run the file's code: not passed on.
        raise CheckpointError(f"{path} {_unreadable_file(path, e)}; {CHECKPOINT_EXPECTED}") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} {_foreign_contents(state)}, not a segdense checkpoint; {CHECKPOINT_EXPECTED}")
    return state


def _unreadable_file(path: Path, error: Exception) -> str:
    """What a file ``torch.load`` could not read is, judged by its first bytes."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "is empty"
    if head == _ZIP_MAGIC:
        return "could not be read: it is truncated or corrupt (a PyTorch archive without its end)"
    if head[0] == _PICKLE_PROTOCOL_OPCODE and "Weights only load failed" in str(error):
        return "holds Python objects other than tensors and plain values (another program's file)"
    if head[0] == _PICKLE_PROTOCOL_OPCODE:
        return "could not be read: it is truncated or corrupt (a PyTorch file in the legacy format)"
    return "is not a checkpoint (not a PyTorch file)"


def _foreign_contents(state: object) -> str:
    """What a readable file that is not a segdense checkpoint holds, in a few words."""
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"holds a bare state_dict ({len(state)} tensors, the first {next(iter(state))!r})"
    if isinstance(state, dict):
        keys = ", ".join(map(repr, list(state)[:5])) + (", ..." if len(state) > 5 else "")
        return f"holds a dict without 'model' and 'model_config' (its keys: {keys or 'none'})"
    return f"holds a {type(state).__name__}"


def whole_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """One forward pass on the whole image: float32 logits (N, C, H, W), the main output of a model with an aux
    head."""
    out = model(images)
    out = out["out"] if isinstance(out, dict) else out
    return out.float()


def argmax_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class indices of (N, C, H, W) logits: the multiclass task's labels."""
    return class_argmax(logits, 1)


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: DataLoader,
    metrics: Metrics,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    infer: Infer = whole_logits,
    progress: bool = False,
    on_first_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    labels: Callable[[torch.Tensor], torch.Tensor] = argmax_labels,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Run ``infer(model, images)`` on every batch of ``loader`` (items start with images and
    masks; padded mask pixels are 255 and so ignored), turn the logits into ``labels`` (the task's:
    :meth:`segdense.tasks.Task.labels`) and return ``metrics.compute()``. With ``loss(logits, masks)``, also
    ``"loss"``: its mean over the images (each batch's value weighted by its image count; under
    torch.distributed over every process's images)."""
    was_training = model.training
    model.eval()
    metrics.reset()
    loss_sum, image_count = torch.zeros((), dtype=torch.float64, device=device), 0
    # A bar on terminals only: in logs and pipes it would be noise.
    batches = tqdm(loader, desc="val", leave=False, dynamic_ncols=True,
                   disable=not (progress and sys.stderr.isatty()))
    for i, batch in enumerate(batches):
        images, masks = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            logits = infer(model, images)
        if loss is not None:
            loss_sum += loss(logits, masks).double() * images.shape[0]
            image_count += images.shape[0]
        prediction = labels(logits)
        metrics.update(prediction, masks)
        if i == 0 and on_first_batch is not None:
            on_first_batch(images, masks, prediction)
    model.train(was_training)
    with collective("the metrics' all_reduce"):  # under torch.distributed: every process's images
        result = metrics.compute()
        if loss is not None:
            result["loss"] = _mean_over_processes(loss_sum, image_count)
    return result


def _mean_over_processes(total: torch.Tensor, count: int) -> float:
    """``total / count`` summed over the processes of torch.distributed (this process's alone without it)."""
    both = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=total.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(both)
    return float(both[0] / both[1]) if both[1] > 0 else float("nan")
