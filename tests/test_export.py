"""Export to ONNX, TorchScript and safetensors, each checked against PyTorch on two input sizes."""
import sys

import numpy as np
import pytest
import torch

import segdense
from segdense.export import ExportError, export_model, verify_torchscript
from segdense.inference import load_bundle

from train_utils import CONF

# two sizes, neither a multiple of the output stride (16), the second with batch 1
SIZES = [(50, 61), (37, 83)]


def compose_export(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="export", overrides=list(overrides))


def test_onnx_has_dynamic_batch_height_width_and_matches_pytorch(tiny_checkpoint, tmp_path):
    bundle = load_bundle(tiny_checkpoint)
    results = export_model(bundle, "onnx", tmp_path / "model.onnx", sizes=SIZES)
    assert [(r["size"], r["batch"]) for r in results] == [([50, 61], 2), ([37, 83], 1)]
    assert all(r["max_abs_diff"] <= 1e-4 for r in results)
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2:] == ["height", "width"]
    # Dense blocks export as incremental two-way concatenations (faster in ONNX Runtime).
    block_concats = [n for n in graph.node if n.op_type == "Concat" and "denseblock" in n.name]
    assert block_concats and all(len(n.input) == 2 for n in block_concats)


def test_torchscript_trace_matches_pytorch_at_other_sizes(tiny_checkpoint, tmp_path):
    bundle = load_bundle(tiny_checkpoint)
    export_model(bundle, "torchscript", tmp_path / "model.pt", sizes=SIZES[:1], verify=False)
    results = verify_torchscript(bundle.model, tmp_path / "model.pt", [(45, 45), (64, 99)])
    assert [r["size"] for r in results] == [[45, 45], [64, 99]]
    assert max(r["max_abs_diff"] for r in results) <= 1e-4


def test_safetensors_round_trip_rebuilds_the_same_model(tiny_checkpoint, tmp_path):
    export_model(load_bundle(tiny_checkpoint), "safetensors", tmp_path / "model.safetensors")
    from_pt = segdense.load_model(tiny_checkpoint)
    from_st = segdense.load_model(tmp_path / "model.safetensors")
    assert from_st.class_names == ["background", "circle", "rectangle", "triangle", "ring"]
    assert from_st.model_config == from_pt.model_config
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(from_st(x), from_pt(x))
    image = np.random.default_rng(0).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    predictions = [segdense.Predictor.from_checkpoint(p).predict(image)
                   for p in (tiny_checkpoint, tmp_path / "model.safetensors")]
    assert np.array_equal(*predictions)


def test_export_tool_prints_the_parity_check(tiny_checkpoint, tmp_path, capsys):
    from segdense.config.export_job import export_job

    cfg = compose_export([f"checkpoint={tiny_checkpoint}", "format=torchscript", f"output={tmp_path / 'm.ts'}",
                          "sizes=[[48,48],[35,70]]"])
    export_job(cfg)
    out = capsys.readouterr().out
    assert "input 2x48x48: max |exported - PyTorch|" in out and "input 1x35x70" in out


def test_export_refuses_to_overwrite_and_unknown_formats(tiny_checkpoint, tmp_path):
    from segdense.config.export_job import export_job
    from segdense.errors import ConfigError

    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(ConfigError, match="exists; pass overwrite=true"):
        export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'm.onnx'}"]))
    with pytest.raises(ConfigError, match="expected one of onnx, torchscript, safetensors"):
        export_job(compose_export([f"checkpoint={tiny_checkpoint}", "format=tflite", f"output={tmp_path / 'x'}"]))
    assert (tmp_path / "m.onnx").read_bytes() == b"old"


def test_missing_onnx_names_the_extra_to_install(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ExportError, match=r'pip install -e "\.\[export\]"'):
        export_model(load_bundle(tiny_checkpoint), "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.delitem(sys.modules, "onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r'onnxruntime: pip install -e "\.\[export\]"'):
        export_model(load_bundle(tiny_checkpoint), "onnx", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("head", ["deeplabv3plus", "fpn"])
def test_decoders_with_skip_connections_export_with_dynamic_sizes(head, tmp_path):
    from segdense.inference.loading import ModelBundle, default_palette

    model = segdense.build_model("densenet_custom", {"name": head, "channels": 16}, num_classes=3, output_stride=8,
                                 num_units_per_block=[1, 1, 1, 1], growth_rate=8)
    bundle = ModelBundle(model.eval(), ["a", "b", "c"], default_palette(3))
    results = export_model(bundle, "onnx", tmp_path / "m.onnx", sizes=SIZES)
    assert max(r["max_abs_diff"] for r in results) <= 1e-4


def _with_nan_statistics(bundle):
    """``bundle`` whose model gives NaN everywhere (a BatchNorm's running variance is NaN)."""
    norm = next(m for m in bundle.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_var.fill_(float("nan"))
    return bundle


@pytest.mark.parametrize("format", ["onnx", "torchscript", "safetensors"])
def test_a_model_whose_outputs_are_nan_fails_verification_and_its_file_is_removed(format, tiny_checkpoint, tmp_path):
    bundle = _with_nan_statistics(load_bundle(tiny_checkpoint))
    output = tmp_path / f"model.{format}"
    with pytest.raises(ExportError, match="NaN or infinite outputs") as err:
        export_model(bundle, format, output, sizes=SIZES)
    assert f"{output} was removed" in str(err.value) and not output.exists()


class _Shifted(torch.nn.Module):
    """Stands for an exported graph that computes something else than the PyTorch model."""

    def __init__(self, model, shift):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x):
        out = self.model(x)
        return (out["out"] if isinstance(out, dict) else out) + self.shift


@pytest.mark.parametrize("shift, message", [(float("nan"), "NaN or infinite"),
                                            (0.5, r"differs from PyTorch by 0\.5 > 0\.0001")])
def test_an_exported_model_that_differs_from_pytorch_is_removed(shift, message, tiny_checkpoint, tmp_path, monkeypatch):
    bundle = load_bundle(tiny_checkpoint)
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: _Shifted(bundle.model, shift).eval())
    output = tmp_path / "model.pt"
    with pytest.raises(ExportError, match=message):
        export_model(bundle, "torchscript", output, sizes=SIZES)
    assert not output.exists()


def test_an_export_whose_check_cannot_run_is_removed_and_the_error_kept(tiny_checkpoint, tmp_path, monkeypatch):
    from segdense.export import formats

    def broken(*args, **kwargs):
        raise RuntimeError("the runtime crashed")

    monkeypatch.setattr(formats, "verify_torchscript", broken)
    with pytest.raises(RuntimeError, match="the runtime crashed"):
        export_model(load_bundle(tiny_checkpoint), "torchscript", tmp_path / "m.pt", sizes=SIZES)
    assert not (tmp_path / "m.pt").exists()


def test_export_with_verify_false_writes_the_file_without_checking(tiny_checkpoint, tmp_path, monkeypatch):
    from segdense.export import formats

    def no_check(*args, **kwargs):
        raise AssertionError("verify=false must not run the exported model")

    monkeypatch.setattr(formats, "verify_onnx", no_check)
    assert export_model(load_bundle(tiny_checkpoint), "onnx", tmp_path / "m.onnx", sizes=SIZES, verify=False) == []
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((1, 3, 40, 44), np.float32)})[0].shape == (1, 5, 40, 44)


def test_export_tool_passes_the_opset_to_onnx(tiny_checkpoint, tmp_path):
    from segdense.config.export_job import export_job

    import onnx

    export_job(compose_export([f"checkpoint={tiny_checkpoint}", "format=onnx", f"output={tmp_path / 'm.onnx'}",
                               "opset=16", "sizes=[[48,48]]"]))
    opsets = {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}
    assert opsets[""] == 16
