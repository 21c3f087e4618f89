"""ONNX, TorchScript and safetensors export of a segmentation model, with parity checks.

The exported graphs take a normalised float32 image batch (N, 3, H, W) of any batch size and any height and
width (not only multiples of the output stride) and return logits (N, num_classes, H, W): the bilinear upsampling
to the input size and the ASPP image pooling use the input's runtime shape, which the checks confirm by running
two different sizes.
"""
from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from segdense.data import build_transforms
from segdense.errors import UserError
from segdense.version import __version__
from segdense.inference.loading import METADATA_KEY, ModelBundle, input_channels, load_bundle, min_input_size
from segdense.inference.onnx_model import run_session as onnx_run
from segdense.inference.writers import atomic_write_bytes

FORMATS = ("onnx", "torchscript", "safetensors")
DTYPES = ("fp32", "fp16")  # fp16: ONNX only, weights, input and output in float16


class ExportError(UserError, RuntimeError):
    """An export that could not be written or verified."""


class LogitsOnly(nn.Module):
    """The model in eval mode returning only the logits tensor (never the training dict)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        return out["out"] if isinstance(out, dict) else out


def _example(model: nn.Module, size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, input_channels(model), *size, generator=generator)


def temporary_path_for(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def onnx_metadata(bundle: ModelBundle, precision: str = "fp32", input_size: str | Sequence[int] = "dynamic") -> dict:
    """What prediction needs to run an ONNX export of ``bundle`` (read back by
    :func:`segdense.inference.onnx_model.read_onnx_metadata`): the bundle's description plus the number of
    classes, the dataset's name, the input (``in_channels``, the file's ``bands`` in the order the model takes them,
    and its normalisation: ``input = (clip(x, low, high) * scale - mean) / std`` per band in the file's units
    ``x``, from :class:`~segdense.data.normalisation.InputScaling`), the segdense version, the precision and the
    input size (``"dynamic"`` or a fixed ``[height, width]``)."""
    scaling = build_transforms(bundle.eval_pipeline).input_scaling
    if scaling is None:
        raise ExportError(f"{bundle.source}: its eval pipeline's normalisation depends on each image (or has "
                          "several steps), so the file's metadata cannot describe it; give it one Normalize "
                          "(standard) or dataset.normalize")
    return {
        **bundle.metadata(), "num_classes": bundle.num_classes, "dataset_name": (bundle.dataset or {}).get("name"),
        "in_channels": input_channels(bundle.model), "bands": bundle.reading["bands"], **scaling.metadata(),
        "segdense_version": __version__,
        "precision": precision, "input_size": input_size if input_size == "dynamic" else list(input_size),
        "min_input_size": min_input_size(bundle.model),
    }


def write_onnx_metadata(path: str | os.PathLike, metadata: dict) -> None:
    """Store ``metadata`` as JSON under ``segdense`` in the ONNX file's ``metadata_props`` (in place)."""
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[METADATA_KEY] = json.dumps(metadata)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_onnx(model: nn.Module, path: str | os.PathLike, example_size: Sequence[int] = (64, 64),
                opset: int = 17, dtype: str = "fp32", metadata: dict | None = None) -> Path:
    """Write ``model`` as ONNX with dynamic batch, height and width (TorchScript-based exporter); ``dtype="fp16"``
    writes a float16 graph (float16 weights, input and output), ``model`` itself stays as it is. ``metadata``
    (:func:`onnx_metadata`) goes into the file for the prediction tools."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError:
        raise ExportError('format=onnx needs the onnx package: pip install -e ".[export]"') from None
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    half = dtype == "fp16"
    wrapped = LogitsOnly(copy.deepcopy(model).half() if half else model).eval()
    example = _example(model, example_size, batch=2)
    tmp = temporary_path_for(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches (checked below)
            torch.onnx.export(
                wrapped, (example.half() if half else example,), str(tmp), input_names=["images"],
                output_names=["logits"], opset_version=opset, dynamo=False,
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                              "logits": {0: "batch", 2: "height", 3: "width"}},
            )
        if metadata is not None:
            write_onnx_metadata(tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike, example_size: Sequence[int] = (64, 64)) -> Path:
    """Write ``model`` traced to TorchScript (shapes stay symbolic, so any input size works)."""
    path = Path(path)
    wrapped = LogitsOnly(model).eval()
    tmp = temporary_path_for(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapped, _example(model, example_size, batch=2), check_trace=False)
            torch.jit.save(traced, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return LogitsOnly(model).eval()(x)


def verify_onnx(model: nn.Module, path: str | os.PathLike, sizes: Sequence[Sequence[int]]) -> list[dict]:
    """Run the ONNX file in onnxruntime on one input per size (batch 2 then 1) and compare with PyTorch:
    ``[{size, batch, max_abs_diff}]``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError('verifying ONNX needs onnxruntime: pip install -e ".[export]"') from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for i, size in enumerate(sizes):
        x = _example(model, size, batch=2 if i % 2 == 0 else 1, seed=i + 1)
        got = onnx_run(session, x)
        results.append(_compare(_reference(model, x), got, size, x.shape[0]))
    return results


def verify_torchscript(model: nn.Module, path: str | os.PathLike, sizes: Sequence[Sequence[int]]) -> list[dict]:
    """Load the TorchScript file and compare it with PyTorch on one input per size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable format
        scripted = torch.jit.load(str(path), map_location="cpu")
    results = []
    for i, size in enumerate(sizes):
        x = _example(model, size, batch=2 if i % 2 == 0 else 1, seed=i + 1)
        with torch.no_grad():
            got = scripted(x)
        results.append(_compare(_reference(model, x), got, size, x.shape[0]))
    return results


def _compare(expected: torch.Tensor, got: torch.Tensor, size, batch: int) -> dict:
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(f"exported model gave shape {tuple(got.shape)} for input size {list(size)}, "
                          f"PyTorch {tuple(expected.shape)}: the export did not keep the sizes dynamic")
    # torch's max propagates NaN, and inf - inf is NaN: any non-finite output on either side gives NaN here.
    return {"size": [int(s) for s in size], "batch": batch,
            "max_abs_diff": float((expected.float() - got.float()).abs().max())}


def check_parity(results: Sequence[dict], format: str, tolerance: float) -> None:
    """Raise ExportError unless every comparison is within ``tolerance``; a NaN difference (the exported model
    or PyTorch itself gave NaN or inf) fails too."""
    failed = [r for r in results if not r["max_abs_diff"] <= tolerance]  # written so that NaN fails
    if any(math.isnan(r["max_abs_diff"]) for r in failed):
        raise ExportError(f"the exported {format} model or PyTorch itself gives NaN or infinite outputs ({failed})")
    if failed:
        worst = max(r["max_abs_diff"] for r in failed)
        raise ExportError(f"the exported {format} model differs from PyTorch by {worst:.3g} > {tolerance:g} "
                          f"({failed})")


def save_safetensors(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Weights (fp32, contiguous) plus the model description as safetensors metadata, readable by
    :func:`segdense.load_model` and :meth:`segdense.Predictor.from_checkpoint`."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    data = save(tensors, metadata={METADATA_KEY: json.dumps(bundle.metadata()), "format": "pt"})
    return atomic_write_bytes(path, data)


def export_model(bundle: ModelBundle, format: str, output: str | os.PathLike,
                 sizes: Sequence[Sequence[int]] = ((64, 64), (77, 93)), opset: int = 17,
                 verify: bool = True, tolerance: float = 1e-4, dtype: str = "fp32") -> list[dict]:
    """Export ``bundle.model`` as ``format`` to ``output``; with ``verify`` run it back and raise ExportError when
    the maximum absolute difference to PyTorch exceeds ``tolerance`` or either side gives NaN/inf. A file that
    fails its check is removed. Returns the comparisons made.

    ``dtype="fp16"`` (ONNX only) is checked for dynamic sizes and finite outputs here, but its logits differ from
    fp32 by design: judge it by :func:`segdense.export.parity.check_parity_on_images` (argmax agreement on real
    images)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if dtype not in DTYPES or (dtype != "fp32" and format != "onnx"):
        raise ValueError(f"dtype={dtype} is not available for format={format}: fp16 is an ONNX export option; "
                         f"valid dtypes: {', '.join(DTYPES)}")
    model = bundle.model.cpu().float().eval()
    output = Path(output)
    if format == "onnx" and verify:  # know before writing anything that the check can run
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ExportError('verifying ONNX needs onnxruntime: pip install -e ".[export]" '
                              "(or pass verify=false)") from None
    if format == "safetensors":
        save_safetensors(bundle, output)
    elif format == "onnx":
        export_onnx(model, output, sizes[0], opset, dtype, metadata=onnx_metadata(bundle, dtype))
    else:
        export_torchscript(model, output, sizes[0])
    if not verify:
        return []
    try:
        results = _verify(model, format, output, sizes)
        check_parity(results, format, tolerance if dtype == "fp32" else math.inf)
    except ExportError as e:
        output.unlink(missing_ok=True)
        raise ExportError(f"{e}; {output} was removed") from None
    except BaseException:  # the check itself could not run: the file stays unverified, so it goes too
        output.unlink(missing_ok=True)
        raise
    return results


def _verify(model: nn.Module, format: str, output: Path, sizes) -> list[dict]:
    if format == "onnx":
        return verify_onnx(model, output, sizes)
    if format == "torchscript":
        return verify_torchscript(model, output, sizes)
    reloaded = load_bundle(output).model
    x = _example(model, sizes[0])
    return [_compare(_reference(model, x), _reference(reloaded, x), sizes[0], 1)]
