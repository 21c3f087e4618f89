"""INT8 ONNX export: BatchNorm folding that keeps the float model's outputs, static QDQ quantization calibrated
on real images, and the accuracy guard that refuses to write a model losing too much mIoU."""
import json
import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from segdense.export import ExportError, export_model
from segdense.export.batchnorm_folding import fold_batchnorms
from segdense.export.formats import LogitsOnly
from segdense.inference import load_bundle
from segdense.inference.onnx_model import onnx_session, run_session

from segdense.config.train_job import train
from segdense.export.parity import validation_images

from infer_fixtures import TINY_EVAL
from test_export import compose_export
from train_utils import compose_config

INT8 = ["quantize=int8", "calibration=4", "eval_images=3", "verify_images=0"]


class ConvThenNorms(nn.Module):
    """Both kinds of BatchNorm: one after a convolution that feeds nothing else (folds into it), one over a
    concatenation whose parts are also read elsewhere (becomes a depthwise 1x1 convolution)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm_after_conv = nn.BatchNorm2d(4)
        self.norm_of_concat = nn.BatchNorm2d(7)
        self.out = nn.Conv2d(7, 2, 1)

    def forward(self, x):
        y = torch.relu(self.norm_after_conv(self.conv(x)))
        both = torch.cat([x, y], 1)
        return self.out(torch.relu(self.norm_of_concat(both))) + both[:, :2]


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator))
            m.running_var.copy_(torch.rand(n, generator=generator) * 4 + 0.05)
            m.weight.data.copy_(torch.randn(n, generator=generator))
            m.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


def onnx_outputs(model, x):
    import onnx

    path = f"/tmp/.segdense_fold_{id(model)}.onnx"
    try:
        onnx.save(model, path)
        return run_session(onnx_session(path), x)
    finally:
        import os

        os.remove(path)


def test_folding_removes_every_batchnorm_and_keeps_the_outputs(tmp_path):
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(randomise_batchnorms(ConvThenNorms()), (torch.randn(1, 3, 8, 8),), str(tmp_path / "m.onnx"),
                          input_names=["images"], dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE, dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}})
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 2
    folded, counts = fold_batchnorms(model)
    assert counts == {"folded": 1, "affine": 1}
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    x = torch.randn(2, 3, 13, 11)
    before, after = onnx_outputs(model, x), onnx_outputs(folded, x)
    assert float(before.abs().max()) > 1 and float((before - after).abs().max()) < 1e-5


def test_folding_a_densenet_keeps_its_logits_within_1e_5(tiny_checkpoint, tmp_path):
    import onnx

    bundle = load_bundle(tiny_checkpoint)
    randomise_batchnorms(bundle.model)
    export_model(bundle, "onnx", tmp_path / "m.onnx", verify=False)
    model = onnx.load(str(tmp_path / "m.onnx"))
    folded, counts = fold_batchnorms(model)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in bundle.model.modules())
    assert counts["affine"] > 0 and counts["folded"] + counts["affine"] <= norms
    assert not [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
    x = torch.randn(1, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    before, after = onnx_outputs(model, x), onnx_outputs(folded, x)
    assert float((before - after).abs().max()) <= 1e-5 * max(1.0, float(before.abs().max()))


def test_int8_export_writes_a_quantized_model_that_agrees_with_float32(tiny_checkpoint, tmp_path, capsys, caplog):
    import onnx

    from segdense.config.export_job import export_job

    output = tmp_path / "m.int8.onnx"
    with caplog.at_level(logging.WARNING):
        result = export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={output}", *INT8,
                                            "max_miou_drop=100"]))
    # Not one warning: none about BatchNorm weights ("Axis 1 is out-of-range for weight ..."), none at all.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    out = capsys.readouterr().out
    assert f"float32 ONNX: mIoU {result['fp32'].miou:.2f}" in out
    assert f"INT8 ONNX:    mIoU {result['int8'].miou:.2f}" in out
    assert f"wrote {output} (onnx, int8)" in out
    model = onnx.load(str(output))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops
    meta = json.loads({p.key: p.value for p in model.metadata_props}["segdense"])
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 4
    assert meta["quantization"]["int8_miou"] == pytest.approx(result["int8"].miou)
    # The INT8 file runs in the prediction tools like any export, and mostly predicts what float32 does.
    from segdense.export.parity import validation_images
    from segdense.inference import Predictor

    bundle = load_bundle(tiny_checkpoint)
    int8 = Predictor(load_bundle(output), device="cpu")
    images = [image for _, image in validation_images(bundle, 3)]
    with torch.no_grad():
        expected = [LogitsOnly(bundle.model)(image[None]).argmax(1)[0] for image in images]
    got = [int8.model(image[None]).argmax(1)[0] for image in images]
    agree = np.mean([float((g == e).float().mean()) for g, e in zip(got, expected)])
    assert agree >= 0.95, f"INT8 predicts float32's class on {100 * agree:.2f} % of the pixels"


def test_int8_that_loses_more_than_max_miou_drop_is_refused_unless_forced(tiny_checkpoint, tmp_path):
    import onnx

    from segdense.config.export_job import export_job

    output = tmp_path / "m.int8.onnx"
    mine = tmp_path / "mine.txt"
    mine.write_text("a user's file")
    # A drop of more than -100 points: true of any model, so the guard must refuse.
    overrides = [f"checkpoint={tiny_checkpoint}", f"output={output}", *INT8, "max_miou_drop=-100"]
    with pytest.raises(ExportError, match=r"INT8 mIoU \d+\.\d\d against float32 mIoU \d+\.\d\d on 3 validation "
                                          r"image\(s\): a drop of -?\d+\.\d\d points, more than max_miou_drop=-100; "
                                          r".*m\.int8\.onnx was not written \(force=true writes it anyway"):
        export_job(compose_export(overrides))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]  # no INT8 file, no temporary file
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i in range(2):  # calibration from a folder of images
        pixels = np.random.default_rng(i).integers(0, 256, (40, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    result = export_job(compose_export([*overrides, "force=true", f"calibration_dir={folder}"]))
    meta = json.loads({p.key: p.value for p in onnx.load(str(output)).metadata_props}["segdense"])
    assert meta["quantization"]["forced"] is True and result["drop"] > -100
    assert meta["quantization"]["calibration_images"] == 2
    assert meta["quantization"]["calibration_source"] == f"{folder} (first 2 images)"
    assert mine.read_text() == "a user's file"


def test_int8_options_are_checked_before_anything_runs(tiny_checkpoint, tmp_path):
    from segdense.config.export_job import export_job
    from segdense.errors import ConfigError

    for bad, message in (("format=torchscript", "expected quantize=int8 with format=onnx"),
                         ("quantize=int4", "expected quantize=int8"), ("calibration=0", "expected positive counts")):
        with pytest.raises(ConfigError, match=message):
            export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'm.onnx'}",
                                       "quantize=int8", bad]))
    assert not list(tmp_path.iterdir())


def test_the_models_taking_turns_score_as_the_evaluation_tool_scores_each(tiny_checkpoint, tmp_path):
    # The export scores float32 and INT8 image by image in turn (stable timings); the mIoU of each must be what
    # tools/eval.py gives for that file alone.
    from torch.utils.data import Subset

    from segdense.export.parity import checkpoint_dataset
    from segdense.export.quantize import score_onnx
    from segdense.evaluation import evaluate_model
    from segdense.runtime import whole_logits

    bundle = load_bundle(tiny_checkpoint)
    float_path, other_path = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_model(bundle, "onnx", float_path)
    bundle.model.head.classifier.bias.data += torch.linspace(-2, 2, bundle.num_classes)  # another model
    export_model(bundle, "onnx", other_path)
    val = checkpoint_dataset(bundle, "val_split", "test")
    eval_set = Subset(val, range(4))
    eval_set.class_names = val.class_names  # what the evaluation checks against the model's classes
    scores = score_onnx([float_path, other_path], eval_set, bundle.num_classes, bundle.class_names)
    for path, score in zip((float_path, other_path), scores):
        alone = evaluate_model(load_bundle(path), eval_set, whole_logits, torch.device("cpu"), batch_size=1,
                               progress=False)
        assert score.miou == pytest.approx(100 * alone["mIoU"], abs=1e-9) and score.ms_per_image > 0
    assert scores[0].miou != pytest.approx(scores[1].miou)  # two models, two scores


def test_an_rdnet_upernet_quantizes_without_a_warning_and_keeps_its_normalisations_float(tmp_path, caplog):
    # RDNet's LayerNorms and UperNet's BatchNorms: the BatchNorms fold; the LayerNorms keep float32 scales (no INT8
    # kernel runs them; per-channel quantization of a 1-D scale is what the quantizer warned about).
    import onnx

    from segdense.config.export_job import export_job

    overrides = [o for o in TINY_EVAL if not o.startswith(("backbone", "head"))] + [
        "backbone=rdnet_custom", "backbone.num_init_features=16", "backbone.growth_rates=[8,12,12,16]",
        "backbone.num_blocks_list=[2,1,2,1]", "head=upernet", "head.channels=16", "output_stride=32"]
    train(compose_config(overrides), run_dir=tmp_path / "run")
    torch.use_deterministic_algorithms(False)
    checkpoint, output = tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "rdnet.int8.onnx"
    with caplog.at_level(logging.WARNING):
        result = export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", *INT8,
                                            "max_miou_drop=100"]))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    graph = onnx.load(str(output)).graph
    assert "BatchNormalization" not in {n.op_type for n in graph.node}  # UperNet's, folded by the exporter
    produced_by = {out: node.op_type for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(n.input[1] in initializers and n.input[2] in initializers for n in norms)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert all(produced_by.get(n.input[1]) == "DequantizeLinear" for n in convs)  # every conv weight is int8
    bundle = load_bundle(checkpoint)
    int8 = load_bundle(output)
    images = [image for _, image in validation_images(bundle, 3)]
    with torch.no_grad():
        expected = [LogitsOnly(bundle.model)(image[None]) for image in images]
        got = [int8.model(image[None]) for image in images]
    # A model trained two steps predicts one class almost everywhere, so compare the logits themselves.
    errors = [float((g - e).norm() / e.norm()) for g, e in zip(got, expected)]
    assert max(errors) < 0.05, f"INT8 logits differ from float32's by {max(errors):.3f} (relative L2)"
