"""Reading a weights file safely: the pretrained loaders and the checkpoint importers both read files here.

Every file is read with ``torch.load(weights_only=True)`` (or safetensors), which never runs code from the file.
Beside tensors and plain values it accepts NumPy scalars (``np.float64(0.777)``, as training scripts store a best
score): NumPy's scalar reconstruction and its numeric dtypes are allowlisted for the read alone
(``torch.serialization.safe_globals``), under the names NumPy 1 and 2 pickle them with; arrays and every other
object are not. A file that holds other Python objects is refused; the message names the entry that holds one
(found by listing the pickle's globals, without importing or calling any of them) and never suggests turning
``weights_only`` off.
"""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from segdense.errors import CheckpointError, MissingFileError

_PICKLE_PROTOCOL_OPCODE = 0x80
# NumPy's numeric dtypes, by their type codes (bool, signed and unsigned integers, floats, complex).
_NUMERIC_DTYPE_CODES = "?bhilqBHILQefdgFDG"


def numpy_scalar_globals() -> list:
    """What a pickled NumPy scalar refers to, as ``torch.serialization.safe_globals`` takes it: the scalar
    reconstruction under NumPy 2's and NumPy 1's module name, ``np.dtype`` and the numeric dtype classes."""
    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    dtypes = {type(np.dtype(code)) for code in _NUMERIC_DTYPE_CODES}
    return [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"), np.dtype,
            *sorted(dtypes, key=lambda t: t.__name__)]


def numpy_scalars_allowed() -> contextlib.AbstractContextManager:
    """Within it, ``torch.load(weights_only=True)`` accepts NumPy scalars (torch 2.6 and later, whose
    ``safe_globals`` takes the ``(global, name)`` pairs NumPy 1's names need; earlier torch refuses them)."""
    if torch.torch_version.TorchVersion(torch.__version__) < (2, 6):
        return contextlib.nullcontext()
    return torch.serialization.safe_globals(numpy_scalar_globals())


def _allowlisted_names() -> set[str]:
    return {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in numpy_scalar_globals()}


def read_weights_file(path: str | os.PathLike) -> object:
    """The object stored in ``path`` (``.safetensors``, or a PyTorch file read with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"input={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} could not be read as safetensors (corrupt or truncated): {e}") from None
    try:
        with warnings.catch_warnings(), numpy_scalars_allowed():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises several kinds (unpickling, zip, weights-only refusals)
        raise CheckpointError(f"{path} {_why_unreadable(path, e)}") from None


def _why_unreadable(path: Path, error: Exception) -> str:
    """What kept ``torch.load(weights_only=True)`` from reading ``path``. torch's own message advises turning
    weights_only off, which would run code from the file: it is not passed on."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head[:4] == b"PK\x03\x04" or (head and head[0] == _PICKLE_PROTOCOL_OPCODE)):
        return "is not a PyTorch or safetensors file"
    if "Weights only load failed" not in str(error):
        return "could not be read: it is truncated or corrupt"
    names = unsafe_globals(path, error)
    where = first_entry_holding(path, set(names)) if names else None
    what = ", ".join(names) or "Python objects"
    return (f"only unpickles with weights_only=False: {where + ' holds' if where else 'it holds'} {what}, not "
            "tensors and plain values. segdense reads weights with weights_only=True only, which never runs code "
            "from a file; re-save the file where it was written with plain values in place of those objects "
            "(e.g. str() or .item() of them, or without that entry)")


def unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The Python classes and functions the file's pickle refers to that ``weights_only=True`` refuses."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (non-zip) format: torch's message names the first one
        first = re.search(r"GLOBAL ([\w.]+)", str(error))
        found = [first.group(1)] if first else []
    allowed = _allowlisted_names()
    return sorted(name for name in found if name not in allowed)


class _StandIn:
    """What every global of the pickle becomes while looking for where the refused ones are: it records the
    name and accepts any arguments and state, running nothing of the file's."""

    name = ""

    def __new__(cls, *args, **kwargs):  # pickle's NEWOBJ calls __new__ alone (no __init__)
        self = super().__new__(cls)
        self.args = list(args)
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.args.append(state)

    def __setitem__(self, key, value):  # a dict subclass (OrderedDict) fills itself this way
        self.args.append(value)

    def append(self, value):  # a list subclass
        self.args.append(value)

    def extend(self, values):
        self.args.extend(values)


class _GlobalNamingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return type("StandIn", (_StandIn,), {"name": f"{module}.{name}"})

    def persistent_load(self, pid):  # tensor storages: not read
        return None


def first_entry_holding(path: Path, names: set[str]) -> str | None:
    """Where (``meta['seed']``) the first stand-in for one of ``names`` sits in the file's top-level dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            obj = _GlobalNamingUnpickler(io.BytesIO(archive.read(data))).load()
    except Exception:  # the legacy format or an unusual archive: the globals alone are named
        return None
    where = _find(obj, names, "")
    return re.sub(r"^\['([^']*)'\]", r"\1", where) if where else None  # meta['seed'], not ['meta']['seed']


def _find(obj, names: set[str], where: str) -> str | None:
    if isinstance(obj, _StandIn):
        if obj.name in names:
            return where or "the file"
        items = [("", a) for a in obj.args]
    elif isinstance(obj, dict):
        items = [(f"[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(f"[{i}]", v) for i, v in enumerate(obj)]
    else:
        return None
    for suffix, value in items:
        found = _find(value, names, where + suffix)
        if found:
            return found
    return None
