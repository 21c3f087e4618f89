"""Export parity on real images: argmax agreement and largest logit difference, the failing gate, fp16 ONNX."""
import numpy as np
import pytest
import torch
from PIL import Image

import segdense
from segdense.export import ExportError, export_model
from segdense.export.formats import LogitsOnly
from segdense.export.parity import check_parity_on_images, folder_images, parity_on_images, validation_images
from segdense.inference import load_bundle

from test_export import compose_export


def test_agreement_is_the_share_of_pixels_with_the_same_argmax(tiny_checkpoint):
    bundle = load_bundle(tiny_checkpoint)
    images = validation_images(bundle, 3)
    reference = LogitsOnly(bundle.model).eval()

    def left_half_shifted(x):  # a "runtime" whose class channels are rolled by one on the left half
        with torch.no_grad():
            logits = reference(x)
        out = logits.clone()
        half = x.shape[-1] // 2
        out[..., :half] = logits[..., :half].roll(1, dims=1)
        return out

    with torch.no_grad():
        eager = [reference(image[None]) for _, image in images]
    total = sum(e[:, 0].numel() for e in eager)
    right = sum(e[:, 0, :, e.shape[-1] // 2:].numel() for e in eager)
    diff = max(float((e[..., : e.shape[-1] // 2].roll(1, dims=1) - e[..., : e.shape[-1] // 2]).abs().max())
               for e in eager)
    result = parity_on_images(bundle.model, left_half_shifted, images)
    assert result["agreement"] == pytest.approx(100.0 * right / total)
    assert result["max_abs_diff"] == pytest.approx(diff)
    assert result["images"] == 3 and result["pixels"] == total


def test_onnx_export_agrees_on_the_validation_images(tiny_checkpoint, tmp_path, capsys):
    from segdense.config.export_job import export_job

    results = export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'm.onnx'}",
                                         "verify_images=3"]))
    parity = results[-1]["real_images"]
    assert parity["images"] == 3 and parity["agreement"] == 100.0 and parity["max_abs_diff"] < 1e-4
    assert "3 real image(s), 6,912 pixels: argmax agreement 100.000 % (min 99.9 %)" in capsys.readouterr().out


def test_a_disagreeing_export_is_removed_and_the_worst_image_named(tiny_checkpoint, tmp_path):
    bundle = load_bundle(tiny_checkpoint)
    other = segdense.load_model(tiny_checkpoint)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    from segdense.inference.loading import ModelBundle

    path = tmp_path / "m.ts"
    export_model(ModelBundle(other.eval(), bundle.class_names, bundle.palette), "torchscript", path, verify=False)
    with pytest.raises(ExportError, match=r"agrees with PyTorch on \d+\.\d+ % of the labels of 2 real image\(s\) "
                                          r"\(< 99\.9 %; worst synthetic"):
        check_parity_on_images(bundle.model, "torchscript", path, validation_images(bundle, 2))
    assert not path.exists()


def test_fp16_onnx_is_float16_and_judged_by_agreement(tiny_checkpoint, tmp_path):
    import onnx
    import onnxruntime as ort

    from segdense.config.export_job import export_job

    path = tmp_path / "m16.onnx"
    results = export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={path}", "dtype=fp16",
                                         "verify_images=4", "min_agreement=95"]))
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    bundle = load_bundle(tiny_checkpoint)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    agree = total = 0
    for _, image in validation_images(bundle, 4):
        with torch.no_grad():
            eager = bundle.model(image[None]).argmax(1).numpy()
        half = session.run(None, {"images": image[None].half().numpy()})[0].argmax(1)
        agree, total = agree + int((half == eager).sum()), total + eager.size
    parity = results[-1]["real_images"]
    assert parity["agreement"] == pytest.approx(100.0 * agree / total) and parity["agreement"] >= 95
    assert 0 < parity["max_abs_diff"] < 0.5  # fp16 rounding: not bit-equal, but close


def test_fp16_needs_onnx_and_the_real_image_check(tiny_checkpoint, tmp_path):
    from segdense.config.export_job import export_job
    from segdense.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 with format=onnx"):
        export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'm.ts'}",
                                   "format=torchscript", "dtype=fp16"]))
    with pytest.raises(ConfigError, match="keep verify_images > 0"):
        export_job(compose_export([f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'm.onnx'}",
                                   "dtype=fp16", "verify_images=0"]))
    assert not list(tmp_path.iterdir())


def test_verify_input_takes_images_from_a_folder(tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    for name, size in (("b.png", (40, 52)), ("a.jpg", (33, 47)), ("c.png", (48, 48))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    images = folder_images(load_bundle(tiny_checkpoint), tmp_path, 2)
    assert [n.split("/")[-1] for n, _ in images] == ["a.jpg", "b.png"]
    assert [tuple(t.shape) for _, t in images] == [(3, 33, 47), (3, 40, 52)]


def test_a_checkpoint_whose_dataset_is_gone_asks_for_verify_input(tiny_checkpoint, tmp_path):
    bundle = load_bundle(tiny_checkpoint)
    bundle.dataset = {"name": "folder", "config": {"name": "folder", "root": str(tmp_path / "gone"),
                                                  "class_names": bundle.class_names, "val_split": "val"}}
    with pytest.raises(ExportError, match="(?s)cannot open the checkpoint.s validation set .*missing folder images"
                                          ".*pass verify_input=DIR"):
        validation_images(bundle, 2)
