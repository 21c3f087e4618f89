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

from segdense.evaluation import evaluate_model
from segdense.export import ExportError, export_model
from segdense.export.batchnorm_folding import fold_batchnorms
from segdense.export.formats import LogitsOnly
from segdense.export.quantize import export_int8
from segdense.inference import load_bundle
from segdense.inference.onnx_model import OnnxModel, onnx_session, run_session
from segdense.runtime import whole_logits

from segdense.config.train_job import train
from segdense.export.parity import checkpoint_dataset, choose_indices, dataset_images, validation_images

from infer_fixtures import TINY_EVAL, TensorDataset
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
                                            "max_miou_drop=100", "calibration_seed=3"]))
    # Not one warning: none about BatchNorm weights ("Axis 1 is out-of-range for weight ..."), none at all.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    out = capsys.readouterr().out
    assert "calibrating on 4 of the 8 images of the training split (seed 3); evaluating on 3 validation" in out
    assert f"float32 ONNX: mIoU {result['fp32_miou']:.2f}\n" in out
    assert f"INT8 ONNX:    mIoU {result['int8_miou']:.2f} (" in out
    # No timing here: the tool says how to time it with the benchmark instead.
    assert " ms" not in out and f"wrote {output} (onnx, int8)\n" in out
    assert (f"to time it against float32: python tools/export.py checkpoint={tiny_checkpoint} format=onnx "
            f"output=FLOAT.onnx, then python tools/benchmark.py --onnx-models FLOAT.onnx {output}") in out
    model = onnx.load(str(output))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops
    meta = json.loads({p.key: p.value for p in model.metadata_props}["segdense"])
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 4
    assert meta["quantization"]["calibration_seed"] == 3 and result["calibration_seed"] == 3
    assert meta["quantization"]["calibration_source"] == "4 of the 8 images of the training split (seed 3)"
    assert meta["quantization"]["int8_miou"] == pytest.approx(result["int8_miou"])
    assert meta["quantization"]["forced"] is False and result["forced"] is False
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


def int8_metadata(path) -> dict:
    import onnx

    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["segdense"])["quantization"]


@pytest.fixture(scope="module")
def known_drop(tiny_checkpoint, tmp_path_factory):
    """(bundle, calibration images, evaluation set, forced export's result, its file): evaluation masks that are
    the float32 export's own predictions, so float32 scores exactly 100 mIoU and every pixel INT8 changes is a loss;
    the drop comes from an export forced past max_miou_drop=0 and is checked against the evaluation tool's score
    of the file written."""
    bundle = load_bundle(tiny_checkpoint)
    randomise_batchnorms(bundle.model)  # predictions that 8 bits do not all keep
    folder = tmp_path_factory.mktemp("known_drop")
    export_model(bundle, "onnx", folder / "float.onnx")
    float_model = OnnxModel(onnx_session(folder / "float.onnx", spinning=False), {})
    images = [image for _, image in validation_images(bundle, 6)]
    eval_set = TensorDataset([(image, float_model(image[None]).argmax(1)[0]) for image in images[2:]],
                             bundle.class_names)
    forced = export_int8(bundle, folder / "forced.onnx", images[:2], eval_set, max_miou_drop=0.0, force=True)
    alone = evaluate_model(load_bundle(folder / "forced.onnx"), eval_set, whole_logits, torch.device("cpu"),
                           batch_size=1, progress=False)
    assert forced["fp32_miou"] == 100.0
    assert forced["int8_miou"] == pytest.approx(100 * alone["mIoU"], abs=1e-9)
    assert forced["drop"] == 100.0 - forced["int8_miou"] and 0.5 < forced["drop"] < 20  # a real loss
    return bundle, images[:2], eval_set, forced, folder / "forced.onnx"


def test_int8_forced_past_max_miou_drop_is_recorded_as_forced(known_drop):
    *_, forced, path = known_drop
    meta = int8_metadata(path)
    assert forced["forced"] is True and meta["forced"] is True
    assert meta["fp32_miou"] == 100.0 and meta["int8_miou"] == forced["int8_miou"]


def test_int8_losing_up_to_max_miou_drop_is_written_unforced(known_drop, tmp_path):
    bundle, calibration, eval_set, forced, _ = known_drop
    drop = forced["drop"]
    for limit in (drop, drop + 0.01):  # exactly at the limit is allowed: "more than max_miou_drop" refuses
        output = tmp_path / f"{limit}.int8.onnx"
        result = export_int8(bundle, output, calibration, eval_set, max_miou_drop=limit)
        assert result["drop"] == drop and result["forced"] is False
        meta = int8_metadata(output)
        assert meta["forced"] is False and meta["fp32_miou"] == 100.0
        assert meta["int8_miou"] == pytest.approx(100.0 - drop, abs=1e-9)


def test_int8_losing_more_than_max_miou_drop_is_refused_and_leaves_nothing(known_drop, tmp_path):
    bundle, calibration, eval_set, forced, _ = known_drop
    drop = forced["drop"]
    output = tmp_path / "m.int8.onnx"
    mine = tmp_path / "mine.txt"
    mine.write_text("a user's file")
    for limit in (drop - 0.01, 0.0):
        with pytest.raises(ExportError) as refused:
            export_int8(bundle, output, calibration, eval_set, max_miou_drop=limit)
        assert str(refused.value) == (
            f"INT8 mIoU {100 - drop:.2f} against float32 mIoU 100.00 on 4 validation image(s): a drop of {drop:.2f} "
            f"points, more than max_miou_drop={limit:g}; {output} was not written (force=true writes it anyway; more "
            "calibration images may help)")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]  # no INT8 file, no temporary file
    assert mine.read_text() == "a user's file"


def test_a_nan_miou_fails_the_int8_guard_and_a_forced_write_says_so(known_drop, tmp_path):
    # No labelled pixel: both mIoUs are NaN, and "NaN > max_miou_drop" is False; the guard must still refuse.
    bundle, calibration, eval_set, *_ = known_drop
    unlabelled = TensorDataset([(image, torch.full_like(mask, 255)) for image, mask in eval_set.pairs],
                               bundle.class_names)
    output = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportError) as refused:
        export_int8(bundle, output, calibration, unlabelled, max_miou_drop=100.0)
    assert str(refused.value) == (
        "INT8 mIoU nan against float32 mIoU nan on 4 validation image(s): no mIoU to compare, since no pixel of "
        "these images carries a class label (all are ignore_index, 255); "
        f"{output} was not written (force=true writes it anyway)")
    assert not list(tmp_path.iterdir())
    result = export_int8(bundle, output, calibration, unlabelled, max_miou_drop=100.0, force=True)
    assert result["forced"] is True and np.isnan(result["drop"])
    meta = int8_metadata(output)  # JSON has no NaN: the scores are null
    assert meta["forced"] is True and meta["fp32_miou"] is None and meta["int8_miou"] is None


def test_calibration_images_are_a_seeded_random_choice(tiny_checkpoint):
    picks = [choose_indices(100, 10, seed) for seed in range(20)]
    assert all(p == sorted(set(p)) and len(p) == 10 and 0 <= p[0] and p[-1] < 100 for p in picks)
    assert picks[0] == choose_indices(100, 10, 0) and picks[0] != picks[1]  # the seed decides, and only it
    # Not the first images (an ordered dataset's first city or sequence): spread over the whole range.
    assert np.mean(picks) == pytest.approx(49.5, abs=5) and len(set().union(*picks)) > 80
    assert choose_indices(5, 10, 0) == choose_indices(5, 10) == [0, 1, 2, 3, 4]  # fewer than asked: all
    train = checkpoint_dataset(load_bundle(tiny_checkpoint), "train_split")
    chosen = dataset_images(train, 3, seed=1)
    assert [name for name, _ in chosen] == [train.describe(i)[0] for i in choose_indices(8, 3, 1)]
    assert all(torch.equal(image, train[i][0]) for (_, image), i in zip(chosen, choose_indices(8, 3, 1)))


def folder_dataset(root, rng) -> list:
    """A folder dataset at ``root``: images a-f, a-c for training (splits/train.txt), d-f for validation. Returns
    the validation image files."""
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir(parents=True)
    for name in "abcdef":
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(rng.integers(0, 5, (48, 48), dtype=np.uint8)).save(root / "masks" / f"{name}.png")
    (root / "splits" / "train.txt").write_text("a\nb\nc\n")
    (root / "splits" / "val.txt").write_text("d\ne\nf\n")
    return [root / "images" / f"{name}.png" for name in "def"]


def checkpoint_trained_on(checkpoint, root, train_split: str, path):
    """A copy of ``checkpoint`` that says it was trained on the folder dataset at ``root``."""
    state = torch.load(checkpoint, weights_only=True)
    state["dataset"]["config"] = {"name": "folder", "root": str(root), "class_names": state["dataset"]["class_names"],
                                  "train_split": train_split, "val_split": "val"}
    torch.save(state, path)
    return path


def test_calibration_images_that_are_also_evaluated_are_warned_about(tiny_checkpoint, tmp_path, caplog, capsys):
    # Same file content counts, whatever the path: the validation folder itself, or copies under other names.
    from segdense.config.export_job import export_job

    rng = np.random.default_rng(0)
    val_files = folder_dataset(tmp_path / "data", rng)
    checkpoint = checkpoint_trained_on(tiny_checkpoint, tmp_path / "data", "train", tmp_path / "folder.pt")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i in range(5):  # c0-c4: images of their own; c5-c7: copies of d, e, f
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(calibration / f"c{i}.png")
    for i, source in enumerate(val_files, start=5):
        (calibration / f"c{i}.png").write_bytes(source.read_bytes())
    chosen = choose_indices(8, 3, 4)
    assert chosen != [0, 1, 2] and {5, 6, 7} & set(chosen)  # seed 4 picks copies; the first three would not
    shared = sorted({5, 6, 7} & set(chosen))

    def export(checkpoint, *overrides):
        caplog.clear()
        output = tmp_path / "m.int8.onnx"
        output.unlink(missing_ok=True)
        with caplog.at_level(logging.WARNING):
            export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "quantize=int8",
                                       "verify_images=0", "max_miou_drop=100", *overrides]))
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING], int8_metadata(output)

    warned, meta = export(checkpoint, "calibration=3", "calibration_seed=4", f"calibration_dir={calibration}")
    assert meta["calibration_source"] == f"3 of the 8 images of {calibration} (seed 4)"
    assert len(warned) == 1 and warned[0].startswith(
        f"{len(shared)} of the 3 calibration image(s) are also among the 3 validation images the INT8 guard scores "
        f"on (same file content, e.g. {calibration / f'c{shared[0]}.png'} and {val_files[shared[0] - 5]}), so the "
        "guard may judge INT8 too kindly")
    warned, _ = export(checkpoint, f"calibration_dir={tmp_path / 'data' / 'images'}", "calibration=6",
                       "eval_images=2")
    assert len(warned) == 1 and warned[0].startswith("2 of the 6 calibration image(s) are also among the 2 ")
    warned, meta = export(checkpoint, "calibration=3")  # the training split: none of its images is evaluated
    assert not warned and meta["calibration_source"] == "3 of the 3 images of the training split (seed 0)"
    # A "training split" that is the validation split: warned about as well.
    same = checkpoint_trained_on(tiny_checkpoint, tmp_path / "data", "val", tmp_path / "same.pt")
    warned, _ = export(same, "calibration=2")
    assert len(warned) == 1 and warned[0].startswith("2 of the 2 calibration image(s) are also among the 3 ")


def test_a_forced_int8_export_says_so(tiny_checkpoint, tmp_path, capsys):
    from segdense.config.export_job import export_job

    output = tmp_path / "m.int8.onnx"
    result = export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={output}", *INT8,
                                        "max_miou_drop=-100", "force=true"]))
    assert result["forced"] is True and int8_metadata(output)["forced"] is True
    assert f"wrote {output} (onnx, int8; forced past the accuracy guard)\n" in capsys.readouterr().out


def test_int8_options_are_checked_before_anything_runs(tiny_checkpoint, tmp_path):
    from segdense.config.export_job import export_job
    from segdense.errors import ConfigError

    for bad, message in (("format=torchscript", "expected quantize=int8 with format=onnx"),
                         ("quantize=int4", "expected quantize=int8"), ("calibration=0", "expected positive counts"),
                         ("calibration_seed=1.5", "calibration_seed=1.5: expected an integer"),
                         ("max_miou_drop=nan", "max_miou_drop=nan: expected a number of mIoU points")):
        with pytest.raises(ConfigError, match=message):
            export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'm.onnx'}",
                                       "quantize=int8", bad]))
    assert not list(tmp_path.iterdir())


def test_the_models_taking_turns_score_as_the_evaluation_tool_scores_each(tiny_checkpoint, tmp_path):
    # The export scores float32 and INT8 image by image in turn (one pass over the data); the mIoU of each must be
    # what tools/eval.py gives for that file alone.
    from torch.utils.data import Subset

    from segdense.export.quantize import score_onnx

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
        assert score == pytest.approx(100 * alone["mIoU"], abs=1e-9)
    assert scores[0] != pytest.approx(scores[1])  # two models, two scores


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


# FC-HarDNet-70 trained briefly on 64x64 synthetic shapes: it learns three of the five classes (mIoU near 38).
FCHARDNET_RUN = [o for o in TINY_EVAL if not o.startswith(("backbone", "head", "iterations", "val_interval",
                                                          "checkpoint_interval", "dataset.num_samples",
                                                          "dataset.image_size", "crop_size"))] + [
    "backbone=fchardnet70", "head=fchardnet", "dataset.num_samples=16", "dataset.image_size=64", "crop_size=[64,64]",
    "iterations=60", "val_interval=60", "checkpoint_interval=60"]


def test_fchardnet70_int8_passes_the_guard_within_one_miou_point_with_float_logits(tmp_path, capsys):
    # HarDBlocks are concatenations of sparse links and the decoder concatenates upsampled maps with skips: every
    # Conv reads int8 weights, and the logits' last upsampling stays float32 (quantized, the full-size logits would
    # be rounded to 8 bits and dequantized again, for nothing).
    import onnx

    from segdense.config.export_job import export_job

    train(compose_config(FCHARDNET_RUN), run_dir=tmp_path / "run")
    torch.use_deterministic_algorithms(False)
    checkpoint, output = tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "fchardnet70.int8.onnx"
    result = export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "quantize=int8",
                                        "calibration=8", "verify_images=0"]))  # max_miou_drop: the default, 1
    assert result["fp32_miou"] > 25, "the briefly trained model should predict several classes"
    assert not result["forced"] and result["drop"] <= 1.0 and output.is_file()
    assert f"wrote {output} (onnx, int8)\n" in capsys.readouterr().out
    graph = onnx.load(str(output)).graph
    produced_by = {out: node for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 70 and all(produced_by[n.input[1]].op_type == "DequantizeLinear" for n in convs)
    last = produced_by[graph.output[0].name]
    assert last.op_type == "Resize" and produced_by[last.input[0]].op_type == "DequantizeLinear"
    assert not [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == last.output[0]]
