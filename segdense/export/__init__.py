"""Exporting a trained model: ONNX (dynamic batch/height/width), TorchScript (traced) and safetensors (weights +
model description), each verified against PyTorch where a runtime exists. ONNX needs the ``export`` extra
(``pip install -e ".[export]"``: onnx, onnxruntime)."""
from .formats import (
    DTYPES, FORMATS, ExportError, export_model, export_onnx, export_torchscript, save_safetensors, verify_onnx,
    verify_torchscript,
)

__all__ = [
    "DTYPES", "FORMATS", "ExportError", "export_model", "export_onnx", "export_torchscript", "save_safetensors",
    "verify_onnx", "verify_torchscript",
]
