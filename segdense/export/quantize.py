"""INT8 ONNX export with an accuracy guard.

The float32 export (:func:`segdense.export.export_model`, checked against PyTorch) has its BatchNorms removed
(:mod:`segdense.export.batchnorm_folding`), then ONNX Runtime's static quantizer writes a QDQ graph with
per-channel int8 weights and uint8 activations whose ranges come from calibration images run through the graph
(min/max over every tensor). Both models are then evaluated on the validation images; the INT8 file is written
only when its mIoU is at most ``max_miou_drop`` points below float32's (or when forced).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
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
# ONNX Runtime runs them in float32 either way (a quantized scale is only dequantized again; measured: the same
# speed and mIoU on an RDNet), and a 1-D scale cannot be quantized per channel ("Axis 1 is out-of-range for
# weight ..." for RDNet's LayerNorms; "Expected bias ... to be an initializer" for GroupNorm, which exports as
# InstanceNormalization).
FLOAT_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization"})


@dataclass
class Score:
    """One model's result on the evaluation images: mIoU in points and the median milliseconds per image."""

    miou: float
    ms_per_image: float


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
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        folded_path.unlink(missing_ok=True)
    return counts


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
               class_names: Sequence[str], task: Task | None = None) -> list[Score]:
    """mIoU (points) of each ONNX file on ``dataset`` (batch 1, whole images; scored as ``task`` scores, multiclass
    by default) and its median ms per image. The
    files take turns on every image and their threads do not spin-wait between runs, so their times see the same
    machine state: timed in two passes instead, the ratio of two models on a 2-core VM swung between 0.81x and
    1.99x from one run to the next; taking turns, it stays within a few per cent."""
    models = [OnnxModel(onnx_session(path, spinning=False), {}, source=str(path)) for path in paths]
    metrics = [SegmentationMetrics(num_classes, list(class_names), task=task) for _ in paths]
    times: list[list[float]] = [[] for _ in paths]
    with torch.inference_mode():
        for images, masks, *_ in build_dataloader(dataset, 1, train=False, num_workers=0):
            for model, metric, model_times in zip(models, metrics, times):
                start = time.perf_counter()
                logits = whole_logits(model, images)
                model_times.append(1000 * (time.perf_counter() - start))
                metric.update(logits, masks)  # float logits: the task makes the labels
    return [Score(miou=100.0 * float(metric.compute()["mIoU"]), ms_per_image=float(torch.tensor(t).median()))
            for metric, t in zip(metrics, times)]


def export_int8(bundle: ModelBundle, output: str | os.PathLike, calibration: Sequence[torch.Tensor], eval_set,
                max_miou_drop: float = 1.0, force: bool = False, opset: int = 17, calibration_source: str = "",
                sizes: Sequence[Sequence[int]] = ((64, 64), (77, 93)),
                report: Callable[[str], object] = logger.info) -> dict:
    """Export ``bundle`` as float32 ONNX (checked against PyTorch), quantize it to INT8, evaluate both on
    ``eval_set`` and write the INT8 file to ``output`` unless it loses more than ``max_miou_drop`` mIoU points
    (``force`` writes it anyway). ``report`` receives the lines to show (BatchNorm folding, both scores).
    Returns ``{"fp32": Score, "int8": Score, "drop": points, ...}``; a refusal raises :class:`ExportError` naming
    both numbers and leaves nothing behind."""
    import_onnxruntime("quantize=int8")
    output = Path(output)
    float_path, int8_path = temporary_path_for(output.with_suffix(".fp32.onnx")), temporary_path_for(output)
    try:
        export_model(bundle, "onnx", float_path, sizes=sizes, opset=opset)
        folding = quantize_int8(float_path, int8_path, calibration)
        fp32, int8 = score_onnx([float_path, int8_path], eval_set, bundle.num_classes, bundle.class_names,
                                bundle.task)
        drop = fp32.miou - int8.miou
        _report_scores(report, folding, fp32, int8, len(eval_set))
        if drop > max_miou_drop and not force:
            raise ExportError(
                f"INT8 mIoU {int8.miou:.2f} against float32 mIoU {fp32.miou:.2f} on {len(eval_set)} validation "
                f"image(s): a drop of {drop:.2f} points, more than max_miou_drop={max_miou_drop:g}; {output} was not "
                "written (force=true writes it anyway; more calibration images may help)")
        meta = onnx_metadata(bundle, "int8")
        meta["quantization"] = {
            "format": "QDQ, per-channel int8 weights, uint8 activations (min/max calibration)",
            "calibration_images": len(calibration), "calibration_source": calibration_source,
            "eval_images": len(eval_set), "fp32_miou": fp32.miou, "int8_miou": int8.miou,
            "forced": drop > max_miou_drop,
        }
        write_onnx_metadata(int8_path, meta)
        os.replace(int8_path, output)
        return {"fp32": fp32, "int8": int8, "drop": drop, "eval_images": len(eval_set), **folding}
    finally:
        float_path.unlink(missing_ok=True)
        int8_path.unlink(missing_ok=True)


def _report_scores(report: Callable[[str], object], folding: dict, fp32: Score, int8: Score, images: int) -> None:
    threads = torch.get_num_threads()
    report(f"  BatchNorms: {folding['folded']} folded into the convolution before them, {folding['affine']} turned "
           f"into depthwise 1x1 convolutions (largest logit change {folding['fold_max_abs_diff']:.2g})")
    report(f"  float32 ONNX: mIoU {fp32.miou:.2f}, {fp32.ms_per_image:.1f} ms per image")
    report(f"  INT8 ONNX:    mIoU {int8.miou:.2f}, {int8.ms_per_image:.1f} ms per image "
           f"({_points(fp32.miou - int8.miou)}, {fp32.ms_per_image / int8.ms_per_image:.2f}x float32's speed)")
    report(f"  ({images} validation image(s), whole images at their own size, batch 1, {threads} thread(s), "
           "ONNX Runtime on the CPU, the two models taking turns on each image; ms: median)")


def _points(drop: float) -> str:
    return f"{abs(drop):.2f} points {'lost' if drop > 0 else 'gained'}" if round(drop, 2) else "no mIoU lost"
