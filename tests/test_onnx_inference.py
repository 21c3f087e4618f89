"""ONNX exports in the prediction tools: the metadata the export embeds, the Predictor, tools/infer.py and
tools/eval.py running the file with ONNX Runtime (whole and slide), and one clear error for a foreign file."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

from segdense.errors import CheckpointError, ConfigError, UserError
from segdense.export import export_model
from segdense.inference import Predictor, load_bundle
from segdense.inference.onnx_model import OnnxModel
from segdense.version import __version__

from infer_fixtures import write_image
from test_eval import compose_eval
from test_export import compose_export
from test_infer import compose_infer


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_model(load_bundle(tiny_checkpoint), "onnx", path)
    return path


@pytest.fixture(scope="module")
def scenes():
    """Three RGB uint8 scenes of the synthetic validation set, at three sizes (not multiples of 16)."""
    from segdense.data import build_dataset

    val = build_dataset("synthetic", split="val", image_size=48, num_samples=3)
    crops = [(48, 48), (45, 37), (33, 47)]
    return [val.load_image(i)[:h, :w].copy() for i, (h, w) in enumerate(crops)]


def agreement(a, b) -> float:
    return 100.0 * float(np.mean(np.asarray(a) == np.asarray(b)))


def test_the_export_embeds_what_prediction_needs(tiny_checkpoint, exported):
    import onnx

    bundle = load_bundle(tiny_checkpoint)
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    meta = json.loads(props["segdense"])
    assert meta["class_names"] == bundle.class_names == ["background", "circle", "rectangle", "triangle", "ring"]
    assert meta["num_classes"] == 5 and meta["palette"] == bundle.palette
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["crop_size"] == [48, 48] and meta["input_size"] == "dynamic" and meta["precision"] == "fp32"
    assert meta["dataset_name"] == "synthetic" and meta["segdense_version"] == __version__
    assert meta["eval_pipeline"] == bundle.eval_pipeline and meta["model_config"] == bundle.model.model_config


@pytest.mark.parametrize("options", [{}, {"mode": "slide", "crop_size": 32, "stride": 21}], ids=["whole", "slide"])
def test_predictor_on_the_onnx_file_agrees_with_pytorch(tiny_checkpoint, exported, scenes, options):
    onnx_predictor = Predictor.from_checkpoint(exported, device="cpu", **options)
    torch_predictor = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", **options)
    assert isinstance(onnx_predictor.model, OnnxModel)
    assert onnx_predictor.class_names == torch_predictor.class_names
    assert onnx_predictor.palette == torch_predictor.palette
    got = onnx_predictor.logits_batch(scenes)
    expected = torch_predictor.logits_batch(scenes)
    for g, e, scene in zip(got, expected, scenes):
        assert g.shape == e.shape == (5, *scene.shape[:2])
        assert float((g - e).abs().max()) < 1e-4
        assert agreement(g.argmax(0), e.argmax(0)) >= 99.9


def test_infer_tool_with_the_onnx_file_writes_the_labels_of_the_checkpoint(tiny_checkpoint, exported, scenes,
                                                                            tmp_path):
    from segdense.config.infer_job import infer_job

    folder = tmp_path / "in"
    folder.mkdir()
    for i, scene in enumerate(scenes):
        write_image(folder / f"{i}.png", scene)
    for name, checkpoint in (("pt", tiny_checkpoint), ("onnx", exported)):
        report = infer_job(compose_infer([f"checkpoint={checkpoint}", f"input={folder}", f"output={tmp_path / name}",
                                          "mode=slide", "crop_size=[32,32]", "overlay=false", "device=cpu"]))
        assert len(report.written) == 3 and not report.failed
    for i in range(3):
        pt = np.asarray(Image.open(tmp_path / "pt" / f"{i}.png"))
        ox = np.asarray(Image.open(tmp_path / "onnx" / f"{i}.png"))
        assert pt.shape == scenes[i].shape[:2] and agreement(pt, ox) >= 99.9


def test_eval_tool_with_the_onnx_file_scores_as_the_checkpoint(tiny_checkpoint, exported, tmp_path):
    from segdense.config.eval_job import evaluate_job

    results = {}
    for name, checkpoint in (("pt", tiny_checkpoint), ("onnx", exported)):
        cfg = compose_eval([f"checkpoint={checkpoint}", "device=cpu", "num_workers=0", "progress=false"])
        results[name] = evaluate_job(cfg, output_dir=tmp_path / name)
    pt, ox = (np.asarray(results[k]["confusion"]) for k in ("pt", "onnx"))
    assert pt.sum() == ox.sum() > 0.9 * 8 * 48 * 48  # the 8 validation images of the checkpoint's dataset
    assert np.abs(pt - ox).sum() / 2 <= 0.001 * pt.sum()  # pixels that moved between cells: at most 0.1 %
    assert results["onnx"]["mIoU"] == pytest.approx(results["pt"]["mIoU"], abs=1e-3)


def test_an_onnx_file_without_segdense_metadata_is_one_clear_error(exported, tmp_path):
    import onnx

    model = onnx.load(str(exported))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    with pytest.raises(CheckpointError, match=rf"^{foreign} is an ONNX model without segdense metadata \(the "
                                              r"'segdense' entry with class names, palette, normalisation"):
        load_bundle(foreign)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match=rf"^{broken} could not be read as an ONNX model"):
        Predictor.from_checkpoint(broken)


def test_a_missing_onnxruntime_is_named_with_the_extra_to_install(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"running the ONNX model .*model\.onnx needs onnxruntime, which is not "
                                        r"installed: pip install -e \"\.\[export\]\""):
        load_bundle(exported)


def test_a_fixed_size_graph_pads_smaller_inputs_and_refuses_larger_ones(exported):
    import torch

    model = load_bundle(exported).model
    x = torch.randn(1, 3, 40, 44)
    dynamic = model(x)
    model.input_size = (48, 48)  # as a graph exported at one size would say in its metadata
    assert model(x).shape == dynamic.shape == (1, 5, 40, 44)
    with pytest.raises(UserError, match=r"takes inputs of 48x48 at most .* use mode=slide crop_size=\[48,48\]"):
        model(torch.randn(1, 3, 50, 48))


def test_export_refuses_an_onnx_file_as_its_checkpoint(exported, tmp_path):
    from segdense.config.export_job import export_job

    with pytest.raises(ConfigError, match="is already an ONNX model"):
        export_job(compose_export([f"checkpoint={exported}", f"output={tmp_path / 'again.onnx'}"]))
