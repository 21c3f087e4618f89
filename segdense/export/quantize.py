"""INT8 ONNX export with an accuracy guard.

The float32 export (:func:`segdense.export.export_model`, checked against PyTorch) has its BatchNorms removed
(:mod:`segdense.export.batchnorm_folding`), then ONNX Runtime's static quantizer writes a QDQ graph with
per-channel int8 weights and uint8 activations whose ranges come from calibration images run through the graph
(min/max over every tensor); the nodes that write the logits without weights of their own (the last
upsampling) stay float32. Both models are then evaluated on the validation images; the INT8 file is written
only when its mIoU is at most ``max_miou_drop`` points below float32's (or when forced). A score that is not a
number (no labelled pixel in the evaluation images) fails the guard: nothing was compared. The export does not time
the models; ``tools/benchmark.py --onnx-models`` does.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from segdense.data import build_dataloader
from segdense.inference.loading import ModelBundle
from segdense.inference.onnx_model import OnnxModel, import_onnxruntime, onnx_session
from segdense.metrics import SegmentationMetrics
from segdense.runtime import whole_logits
from segdense.tasks import Task

from .batchnorm_folding import fold_batchnorms
from .formats import ExportError, export_model, onnx_metadata, temporary_path_for, write_onnx_metadata

logger = logging.getLogger("segdense.export")
FOLD_TOLERANCE = 1e-5  # largest logit difference the BatchNorm folding may make
# Normalisations stay float32 (their input and output tensors are still quantized where their neighbours are):
# ONNX Runtime runs them in float32 either way (a quantized scale is only dequantized again; docs/inference.md,
# "Other normalisations"), and a 1-D scale cannot be quantized per channel ("Axis 1 is out-of-range for
# weight ..." for RDNet's LayerNorms; "Expected bias ... to be an initializer" for GroupNorm, which exports as
# InstanceNormalization).
FLOAT_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization"})
# Operators that are worth running in INT8 even when they write the model's output (they carry the weights).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def quantize_int8(float_path: str | os.PathLike, output: str | os.PathLike,
                  calibration: Sequence[torch.Tensor]) -> dict:
    """Write the static INT8 quantization (QDQ, per-channel weights) of the float32 ONNX file ``float_path`` to
    ``output``, calibrated on ``calibration`` (normalised images (3, H, W)); BatchNorms are folded first.
    Returns ``{"folded": n, "affine": m, "fold_max_abs_diff": d}``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry

    if not calibration:
        raise ExportError("no calibration image (calibration=0, or an empty calibration_dir)")
    folded, counts = fold_batchnorms(onnx.load(str(float_path)))
    float_tail = output_writers_without_weights(folded)
    folded_path = temporary_path_for(Path(output).with_suffix(".folded.onnx"))
    try:
        onnx.save(folded, str(folded_path))
        counts["fold_max_abs_diff"] = _fold_difference(float_path, folded_path, calibration[0])

        class Images(CalibrationDataReader):
            def __init__(self):
                self.items = iter(calibration)

            def get_next(self):
                image = next(self.items, None)
                return None if image is None else {"images": image[None].float().numpy()}

        with _without_preprocessing_advice():
            quantize_static(str(folded_path), str(output), Images(), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=sorted(set(QDQRegistry) - FLOAT_OPS), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=float_tail)
    finally:
        folded_path.unlink(missing_ok=True)
    return counts


def output_writers_without_weights(model) -> list[str]:
    """Names of the nodes that write a graph output and carry no weights (a segmentation model's last bilinear
    upsampling of its logits). They stay float32: quantized, the logits would be rounded to 8 bits at full image
    size and dequantized again, which costs time (docs/hardnet.md measures it) and precision for nothing, since the upsampling reads the dequantized output of the last convolution either way."""
    outputs = {out.name for out in model.graph.output}
    return [node.name for node in model.graph.node
            if outputs.intersection(node.output) and node.op_type not in WEIGHTED_OPS]


def _fold_difference(float_path, folded_path, image: torch.Tensor) -> float:
    """Largest logit difference between the graph with and without its BatchNorms, on one real image; above
    ``FOLD_TOLERANCE`` the folding is wrong, which is a bug, not a user's mistake."""
    x = image[None].float()
    reference = OnnxModel(onnx_session(float_path), {})(x)
    folded = OnnxModel(onnx_session(folded_path), {})(x)
    diff = float((reference - folded).abs().max())
    if not diff <= FOLD_TOLERANCE * max(1.0, float(reference.abs().max())):
        raise RuntimeError(f"folding the BatchNorms changed the logits by {diff:.3g}")
    return diff


class _without_preprocessing_advice(logging.Filter):
    """The quantizer advises (on the root logger) running ONNX Runtime's pre-processing, shape inference and
    graph optimisation; after the folding the graph is plain convolutions with known channels, so that one note
    is dropped. Every other message of the quantizer is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(("Please consider to run pre-processing",
                                                       "Please consider pre-processing"))

    def __enter__(self):
        for handler in [logging.getLogger(), *logging.getLogger().handlers]:
            handler.addFilter(self)

    def __exit__(self, *exc):
        for handler in [logging.getLogger(), *logging.getLogger().handlers]:
            handler.removeFilter(self)


def score_onnx(paths: Sequence[str | os.PathLike], dataset, num_classes: int,
               class_names: Sequence[str], task: Task | None = None) -> list[float]:
    """mIoU (points) of each ONNX file on ``dataset`` (batch 1, whole images; scored as ``task`` scores, multiclass
    by default); NaN where no pixel is labelled. The
    files take turns on every image (one pass over the data); their threads sleep between runs instead of
    spin-waiting, so one session's idle threads do not hold the cores the next one runs on."""
    models = [OnnxModel(onnx_session(path, spinning=False), {}, source=str(path)) for path in paths]
    metrics = [SegmentationMetrics(num_classes, list(class_names), task=task) for _ in paths]
    with torch.inference_mode():
        for images, masks, *_ in build_dataloader(dataset, 1, train=False, num_workers=0):
            for model, metric in zip(models, metrics):
                metric.update(whole_logits(model, images), masks)  # float logits: the task makes the labels
    return [100.0 * float(metric.compute()["mIoU"]) for metric in metrics]


def export_int8(bundle: ModelBundle, output: str | os.PathLike, calibration: Sequence[torch.Tensor], eval_set,
                max_miou_drop: float = 1.0, force: bool = False, opset: int = 17, calibration_source: str = "",
                calibration_seed: int | None = None, sizes: Sequence[Sequence[int]] = ((64, 64), (77, 93)),
                report: Callable[[str], object] = logger.info) -> dict:
    """Export ``bundle`` as float32 ONNX (checked against PyTorch), quantize it to INT8, evaluate both on
    ``eval_set`` and write the INT8 file to ``output`` unless it loses more than ``max_miou_drop`` mIoU points or
    either mIoU is NaN (``force`` writes it anyway, recorded as ``forced`` in its metadata). ``report`` receives the
    lines to show (BatchNorm folding, both mIoUs); ``calibration_source`` and ``calibration_seed`` (how the
    calibration images were chosen) go into the metadata. Returns ``{"fp32_miou", "int8_miou", "drop" (points),
    "forced", "eval_images", "calibration_seed", ...}``; a refusal raises :class:`ExportError` naming both numbers
    and leaves nothing behind."""
    import_onnxruntime("quantize=int8")
    output = Path(output)
    float_path, int8_path = temporary_path_for(output.with_suffix(".fp32.onnx")), temporary_path_for(output)
    try:
        export_model(bundle, "onnx", float_path, sizes=sizes, opset=opset)
        folding = quantize_int8(float_path, int8_path, calibration)
        fp32, int8 = score_onnx([float_path, int8_path], eval_set, bundle.num_classes, bundle.class_names,
                                bundle.task)
        _report_scores(report, folding, fp32, int8, len(eval_set))
        drop, failed = fp32 - int8, guard_failure(fp32, int8, max_miou_drop, len(eval_set))
        if failed and not force:
            raise ExportError(f"{failed}; {output} was not written (force=true writes it anyway"
                              f"{'' if math.isnan(drop) else '; more calibration images may help'})")
        meta = onnx_metadata(bundle, "int8")
        meta["quantization"] = {
            "format": "QDQ, per-channel int8 weights, uint8 activations (min/max calibration)",
            "calibration_images": len(calibration), "calibration_source": calibration_source,
            "calibration_seed": calibration_seed, "eval_images": len(eval_set),
            "fp32_miou": _number(fp32), "int8_miou": _number(int8), "forced": bool(failed),
        }
        write_onnx_metadata(int8_path, meta)
        os.replace(int8_path, output)
        return {"fp32_miou": fp32, "int8_miou": int8, "drop": drop, "forced": bool(failed),
                "eval_images": len(eval_set), "calibration_seed": calibration_seed, **folding}
    finally:
        float_path.unlink(missing_ok=True)
        int8_path.unlink(missing_ok=True)


def guard_failure(fp32: float, int8: float, max_miou_drop: float, images: int) -> str:
    """Why the INT8 model fails the accuracy guard, in one line, or ``""`` when it passes: it passes only when
    both mIoUs are numbers and INT8's is at most ``max_miou_drop`` points below float32's."""
    scores = f"INT8 mIoU {int8:.2f} against float32 mIoU {fp32:.2f} on {images} validation image(s)"
    if math.isnan(fp32) or math.isnan(int8):
        return (f"{scores}: no mIoU to compare, since no pixel of these images carries a class label (all are "
                "ignore_index, 255)")
    drop = fp32 - int8
    if drop > max_miou_drop:
        return f"{scores}: a drop of {drop:.2f} points, more than max_miou_drop={max_miou_drop:g}"
    return ""


def calibration_overlap(calibration_files: Sequence[str | os.PathLike],
                        eval_files: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(calibration file, evaluation file) pairs with the same content (SHA-256 of the bytes): the same file by
    any path, link or copy. Only files of equal size are read."""
    by_size = defaultdict(list)
    for path in map(Path, eval_files):
        by_size[path.stat().st_size].append(path)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return digests[path]

    return [(path, other) for path in map(Path, calibration_files) for other in by_size.get(path.stat().st_size, [])
            if digest(path) == digest(other)]


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value  # JSON has no NaN


def _report_scores(report: Callable[[str], object], folding: dict, fp32: float, int8: float, images: int) -> None:
    report(f"  BatchNorms: {folding['folded']} folded into the convolution before them, {folding['affine']} turned "
           f"into depthwise 1x1 convolutions (largest logit change {folding['fold_max_abs_diff']:.2g})")
    report(f"  float32 ONNX: mIoU {fp32:.2f}")
    report(f"  INT8 ONNX:    mIoU {int8:.2f} ({_points(fp32 - int8)})")
    report(f"  ({images} validation image(s), whole images at their own size, batch 1, ONNX Runtime on the CPU)")


def _points(drop: float) -> str:
    if math.isnan(drop):
        return "no labelled pixel: nothing to compare"
    return f"{abs(drop):.2f} points {'lost' if drop > 0 else 'gained'}" if round(drop, 2) else "no mIoU lost"
