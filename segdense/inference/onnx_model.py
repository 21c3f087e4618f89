"""Running an ONNX file written by ``tools/export.py`` as if it were the PyTorch model it came from.

The export stores, in the ONNX model's ``metadata_props`` under ``segdense`` (JSON), what prediction needs:
class names, palette, the eval pipeline with its normalisation mean and std, the training crop, the number of
classes, the dataset, the segdense version, the precision (fp32, fp16, int8) and whether the graph takes any
input size (``input_size: "dynamic"``) or one fixed ``[height, width]``. :func:`load_onnx_bundle` reads it with
ONNX Runtime alone (no onnx package, no training code) and wraps the session in :class:`OnnxModel`, a module
whose forward runs the session, so slide inference, TTA, the Predictor and the evaluation loop use it unchanged.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from segdense.errors import CheckpointError, UserError

METADATA_KEY = "segdense"
ONNX_EXTRA = 'pip install -e ".[export]"'


class OnnxModel(nn.Module):
    """An ONNX Runtime session as a module: ``forward(images)`` takes a normalised float batch (N, 3, H, W) on any
    device and returns float32 logits (N, C, H, W) on that device. A graph with a fixed input size gets smaller
    images padded at the bottom/right (logits cropped back); larger ones are refused with a hint to slide."""

    def __init__(self, session, metadata: dict, source: str = ""):
        super().__init__()
        self.session = session
        self.source = source
        self.model_config = dict(metadata.get("model_config") or {})
        self.model_config.setdefault("num_classes", int(metadata.get("num_classes", 0)))
        self.precision = str(metadata.get("precision", "fp32"))
        self.min_input_size = int(metadata.get("min_input_size") or 1)
        size = metadata.get("input_size", "dynamic")
        self.input_size = None if size == "dynamic" else tuple(int(s) for s in size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        x = images.detach().float().cpu()
        if self.input_size is not None:
            fh, fw = self.input_size
            if h > fh or w > fw:
                raise UserError(f"{self.source} takes inputs of {fh}x{fw} at most (its graph has a fixed input "
                                f"size), got {h}x{w}: use mode=slide crop_size=[{fh},{fw}]")
            x = torch.nn.functional.pad(x, (0, fw - w, 0, fh - h))
        return run_session(self.session, x)[..., :h, :w].to(images.device)

    def extra_repr(self) -> str:
        size = "dynamic" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]}"
        return f"{self.source}, {self.precision}, input size {size}"


def run_session(session, x: torch.Tensor) -> torch.Tensor:
    """Float32 logits (CPU) of an ONNX Runtime ``session`` for the batch ``x``, fed as the graph's input type
    (float32, or float16 for fp16 exports)."""
    graph_input = session.get_inputs()[0]
    dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
    feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)
    out = session.run(None, {graph_input.name: feed})[0]
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


def import_onnxruntime(purpose: str):
    """``onnxruntime``, or one clear error saying what needed it and how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{purpose} needs onnxruntime, which is not installed: {ONNX_EXTRA}") from None
    return onnxruntime


def onnx_session(path: str | os.PathLike, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session for ``path``, on ``threads`` intra-op threads (default: torch's count, so
    the tools' thread settings apply to both runtimes). ``spinning=False``: its threads sleep as soon as a run
    ends instead of spin-waiting for the next one (a little slower alone, but two sessions taking turns on the
    same cores no longer slow each other down)."""
    ort = import_onnxruntime(f"running the ONNX model {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's own notes on graph optimisation are not the user's concern
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
        raise CheckpointError(f"{path} could not be read as an ONNX model: {str(e).strip()}") from None


def read_onnx_metadata(session, path: str | os.PathLike) -> dict:
    """The ``segdense`` metadata of an ONNX model; one :class:`CheckpointError` naming the file and what is
    missing when the file was not written by ``tools/export.py``."""
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path} is an ONNX model without segdense metadata (the '{METADATA_KEY}' entry with class names, "
            "palette, normalisation and input size); export the checkpoint with tools/export.py format=onnx")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its segdense metadata is not valid JSON ({e})") from None
    missing = [key for key in ("class_names", "eval_pipeline") if not meta.get(key)]
    if missing:
        raise CheckpointError(f"{path}: its segdense metadata lacks {', '.join(missing)}; export the checkpoint "
                              "again with tools/export.py format=onnx")
    return meta


def load_onnx_model(path: str | os.PathLike, threads: int | None = None) -> tuple[OnnxModel, dict]:
    """The :class:`OnnxModel` for ``path`` and the metadata it was exported with."""
    path = Path(path)
    session = onnx_session(path, threads)
    meta = read_onnx_metadata(session, path)
    return OnnxModel(session, meta, source=str(path)), meta
