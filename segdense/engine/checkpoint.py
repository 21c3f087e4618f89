"""Self-describing training checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) with:
``model`` (state_dict), ``model_config`` (keyword arguments of :func:`segdense.build_model`),
``dataset`` (name, class names, palette), ``iteration``, ``optimizer``, ``scheduler``, ``scaler``,
``rng``, ``best_miou``, ``early_stop`` (its count), ``config`` (the resolved run configuration) and
``segdense_version``. With weight EMA, ``model`` holds the average (what validation scored) and ``raw_model`` the
trained weights.
:func:`segdense.runtime.load_checkpoint` reads them; :func:`init_model_weights` starts a new run from one's
weights (``init_from``).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from segdense.errors import CheckpointError, MissingFileError
from segdense.runtime import load_checkpoint

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed and
    fsynced, then renamed over the target. A crash at any moment leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def find_last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """``<run_dir>/checkpoints/last.pt`` if it exists."""
    path = Path(run_dir) / CHECKPOINT_DIR / LAST
    return path if path.is_file() else None


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) random states as weights_only-loadable values."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, np_gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def state_dict_mismatch(model: nn.Module, weights: dict) -> list[str]:
    """What keeps ``weights`` from loading strictly into ``model``: missing and unexpected entries and shape
    differences, one line each (empty when they match)."""
    own = model.state_dict()
    problems = [f"missing {key}" for key in own if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in own]
    problems += [f"{key}: checkpoint {tuple(weights[key].shape)}, model {tuple(value.shape)}"
                 for key, value in own.items() if key in weights and tuple(weights[key].shape) != tuple(value.shape)]
    return problems


def _describe(config: dict) -> str:
    """``backbone + head, N classes`` of a ``model_config`` (either form) for messages."""
    backbone, head = (part.get("name") if isinstance(part, dict) else part
                      for part in (config.get("backbone"), config.get("head")))
    return f"{backbone} + {head}, {config.get('num_classes')} classes"


def init_model_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load the model weights of the segdense checkpoint ``path`` (read with ``weights_only=True``) into ``model``,
    strictly: nothing else of the run (optimizer, schedule, iteration) is taken. Returns the checkpoint's
    ``model_config``. A checkpoint of another architecture or class count is refused with one
    :class:`CheckpointError` naming the file, both model configs and the first differing tensors."""
    if not Path(path).is_file():
        raise MissingFileError(f"init_from={path}: no such checkpoint file (expected a segdense checkpoint, e.g. "
                               "<run dir>/checkpoints/best.pt)")
    state = load_checkpoint(path)
    problems = state_dict_mismatch(model, state["model"])
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
        raise CheckpointError(
            f"init_from={path}: its weights do not fit this model (the checkpoint's is "
            f"{_describe(state['model_config'])}, this run's {_describe(getattr(model, 'model_config', {}))}): {shown}")
    model.load_state_dict(state["model"], strict=True)
    return state["model_config"]
