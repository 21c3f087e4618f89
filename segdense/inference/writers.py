"""Writing output files atomically (a temporary file in the same folder, then a rename), so an interrupted run
never leaves a half-written PNG, NPY or JSON behind; :func:`atomic_write_files` does it for a group of files."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from segdense.errors import NotWritableError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write_files({path: data})[0]


def atomic_write_files(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write every ``path: data`` as a group: all temporary files first, then the renames, so an interrupted run
    leaves all of them or none (a kill between two renames aside), never a half-written file."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            written.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data)
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    return [path for _, path in written]


def _encoded(save: Callable[[io.BytesIO], None]) -> bytes:
    buffer = io.BytesIO()
    save(buffer)
    return buffer.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    return _encoded(lambda b: Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(b, "PNG"))


def label_png_bytes(labels: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> bytes:
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
    return _encoded(lambda b: image.save(b, "PNG"))


def npy_bytes(array: np.ndarray) -> bytes:
    return _encoded(lambda b: np.save(b, array))


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    return atomic_write_bytes(path, png_bytes(rgb))


def write_label_png(path: str | os.PathLike, labels: np.ndarray,
                    palette: Sequence[Sequence[int]] | None = None) -> Path:
    """:func:`label_png_bytes` written atomically to ``path``."""
    return atomic_write_bytes(path, label_png_bytes(labels, palette))


def write_json(path: str | os.PathLike, data) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def check_writable_dir(path: str | os.PathLike, what: str = "output") -> Path:
    """Create ``path`` if needed and make sure files can be written in it; one clear NotWritableError (a
    PermissionError) otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise NotWritableError(f"{what} directory {path} is not writable ({e.strerror or e})") from None
    return path
