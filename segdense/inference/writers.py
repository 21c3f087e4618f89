"""Writing output files atomically (a temporary file in the same folder, then a rename), so an interrupted run
never leaves a half-written PNG, NPY or JSON behind."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _encoded(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    from PIL import Image

    return atomic_write_bytes(path, _encoded(lambda b: Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(b, "PNG")))


def write_label_png(path: str | os.PathLike, labels: np.ndarray,
                    palette: Sequence[Sequence[int]] | None = None) -> Path:
    """Class indices as an 8-bit PNG whose pixel values are the indices; a palette ("P") PNG when ``palette`` is
    given, so viewers show colours while the values stay indices."""
    from PIL import Image

    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels must lie in [0, 255] for an 8-bit PNG, got {labels.min()}..{labels.max()}")
    image = Image.fromarray(labels.astype(np.uint8))  # mode "L"
    if palette is not None:
        flat = [int(v) for c in palette for v in c][:768]
        image.putpalette(flat + [0] * (768 - len(flat)))
    return atomic_write_bytes(path, _encoded(lambda b: image.save(b, "PNG")))


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write_bytes(path, _encoded(lambda b: np.save(b, array)))


def write_json(path: str | os.PathLike, data) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def check_writable_dir(path: str | os.PathLike, what: str = "output") -> Path:
    """Create ``path`` if needed and make sure files can be written in it; one clear PermissionError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{what} directory {path} is not writable ({e.strerror or e})") from None
    return path
