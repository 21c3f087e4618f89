"""Self-describing training checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict (tensors, numbers, strings, lists, dicts) with:
``model`` (state_dict), ``model_config`` (keyword arguments of :func:`segdense.build_model`),
``dataset`` (name, class names, palette), ``iteration``, ``optimizer``, ``scheduler``, ``scaler``,
``rng``, ``best_miou``, ``config`` (the resolved run configuration) and ``segdense_version``.
:func:`segdense.runtime.load_checkpoint` reads them.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

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
