"""What comes out of a model trained on 4-band 16-bit (or 1-band float) data: the evaluation report's and
TensorBoard's pictures show the file's values (the dataset's own normalisation inverted, not ImageNet's), the
ONNX metadata describes that normalisation truthfully, and the ONNX, INT8 and TorchScript exports take the
model's band count and predict what PyTorch predicts."""
import io
import json
import warnings

import numpy as np
import pytest
import tifffile
import torch

from segdense.data import build_transforms
from segdense.inference.draw import input_picture, preview_rgb
from test_bands_end_to_end import MEAN, STD, folder_overrides, write_folder
from train_utils import compose_config

NORMALISATIONS = {
    "mean/std": {"mean": MEAN, "std": STD},
    "scale": {"scale": "1/65535"},
    "scale, mean/std": {"scale": 0.001, "mean": [1, 2, 3, 4], "std": [0.5, 0.5, 0.5, 2]},
    "low/high": {"low": [100, 200, 300, 400], "high": [3000, 3100, 3200, 3300]},
    "low/high, mean/std": {"low": [100, 200, 300, 400], "high": [3000, 3100, 3200, 3300], "mean": 0.5, "std": 0.25},
}


def uint16_image(seed=0, size=16, bands=4):
    return np.random.default_rng(seed).integers(0, 4000, (size, size, bands), dtype=np.uint16)


def through(transform, image):
    return transform(image, np.zeros(image.shape[:2], np.uint8))[0]


@pytest.mark.parametrize("normalize", NORMALISATIONS.values(), ids=NORMALISATIONS.keys())
def test_input_scaling_turns_model_input_back_into_the_files_values(normalize):
    transform = build_transforms([{"type": "Normalize"}], normalize=normalize)
    image = uint16_image()
    scaling = transform.input_scaling
    expected = image.astype(np.float64) if scaling.low is None else np.clip(image, scaling.low, scaling.high)
    np.testing.assert_allclose(scaling.to_file_units(through(transform, image)), expected, atol=0.01)


@pytest.mark.parametrize("normalize", NORMALISATIONS.values(), ids=NORMALISATIONS.keys())
def test_the_metadata_formula_gives_the_pipelines_input(normalize):
    """``input = (clip(x, low, high) * scale - mean) / std``, with the values of ``metadata()``."""
    transform = build_transforms([{"type": "Normalize"}], normalize=normalize)
    meta = transform.input_scaling.metadata()
    x = uint16_image(1).astype(np.float64)
    if meta["low"] is not None:
        x = np.clip(x, meta["low"], meta["high"])
    formula = (x * np.array(meta["scale"]) - np.array(meta["mean"])) / np.array(meta["std"])
    np.testing.assert_allclose(np.moveaxis(formula, -1, 0), through(transform, uint16_image(1)).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_pictures_of_8bit_rgb_are_the_image_itself_and_of_other_data_a_stretch_of_its_values():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    imagenet = build_transforms([{"type": "Normalize"}])
    assert np.array_equal(input_picture(through(imagenet, rgb), imagenet.input_scaling), rgb)
    four = build_transforms([{"type": "Normalize"}], normalize={"mean": MEAN, "std": STD})
    image = uint16_image()
    picture = input_picture(through(four, image), four.input_scaling)
    assert picture.dtype == np.uint8 and picture.shape == (16, 16, 3)
    assert np.abs(picture.astype(int) - preview_rgb(image[..., :3]).astype(int)).max() <= 1  # bands 1-3
    grey = np.random.default_rng(2).normal(0.3, 0.1, (16, 16, 1)).astype(np.float32)
    one = build_transforms([{"type": "Normalize"}], normalize={"mean": [0.3], "std": [0.1]})
    picture = input_picture(through(one, grey), one.input_scaling)
    assert (picture[..., 0] == picture[..., 1]).all() and (picture[..., 0] == picture[..., 2]).all()
    assert np.abs(picture[..., 0].astype(int) - preview_rgb(grey)[..., 0]).max() <= 1
    assert picture.min() == 0 and picture.max() == 255  # stretched between its 2nd and 98th percentiles


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from segdense.config.train_job import train

    tmp = tmp_path_factory.mktemp("bands_outputs")
    root = write_folder(tmp / "data")
    train(compose_config(folder_overrides(root) + ["logger=[tensorboard]"]), run_dir=tmp / "run")
    torch.use_deterministic_algorithms(False)
    return root, tmp / "run" / "checkpoints" / "last.pt", tmp


def file_picture(root, name="s0"):
    """The picture of a 4-band file's first three bands, from the file itself."""
    return preview_rgb(np.moveaxis(tifffile.imread(root / "images" / f"{name}.tif"), 0, -1)[..., :3])


def test_tensorboard_shows_the_files_bands_not_imagenet_colours(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from PIL import Image

    root, _, tmp = trained
    events = EventAccumulator(str(tmp / "run" / "tensorboard"))
    events.Reload()
    grid = np.asarray(Image.open(io.BytesIO(events.Images("val/image_gt_pred")[-1].encoded_image_string)))
    first = grid[2:34, 2:34, :3]  # make_grid's padding of 2, then the first 32x32 picture
    assert np.abs(first.astype(int) - file_picture(root).astype(int)).max() <= 1


def test_evaluation_report_shows_the_files_bands(trained):
    from PIL import Image

    from segdense.config.eval_job import evaluate_job
    from test_eval import compose_eval

    root, checkpoint, tmp = trained
    out = tmp / "eval"
    result = evaluate_job(compose_eval([f"checkpoint={checkpoint}", f"output_dir={out}", "report=true",
                                        "report_images=4", "progress=false", "device=cpu"]))
    assert result["report"]
    shown = sorted((out / "report" / "gallery").glob("*_image.png"))
    assert len(shown) == 4
    pictures = {name: file_picture(root, name) for name in ("s0", "s1", "s2", "s3")}
    for path in shown:
        got = np.asarray(Image.open(path)).astype(int)
        assert min(np.abs(got - p.astype(int)).max() for p in pictures.values()) <= 1, path.name


@pytest.fixture(scope="module")
def exported(trained):
    from segdense.config.export_job import export_job
    from test_export import compose_export

    _, checkpoint, tmp = trained
    output = tmp / "model.onnx"
    export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "verify_images=2"]))
    return output


def test_onnx_metadata_describes_the_4_band_16_bit_input(trained, exported):
    import onnx

    root, _, _ = trained
    meta = json.loads({p.key: p.value for p in onnx.load(str(exported)).metadata_props}["segdense"])
    assert meta["in_channels"] == 4 and meta["bands"] is None
    assert meta["mean"] == MEAN and meta["std"] == STD and meta["scale"] == [1.0]
    assert meta["low"] is None and meta["high"] is None
    inputs = onnx.load(str(exported)).graph.input[0].type.tensor_type.shape.dim
    assert inputs[1].dim_value == 4


def test_onnx_prediction_on_a_16_bit_file_equals_pytorchs(trained, exported):
    from segdense.inference import Predictor

    root, checkpoint, _ = trained
    path = str(root / "images" / "s1.tif")
    onnx_predictor = Predictor.from_checkpoint(exported, device="cpu")
    torch_predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert torch.equal(onnx_predictor.preprocess(path)[1], torch_predictor.preprocess(path)[1])
    np.testing.assert_allclose(onnx_predictor.predict_proba(path), torch_predictor.predict_proba(path), atol=1e-5)
    assert np.array_equal(onnx_predictor.predict(path), torch_predictor.predict(path))


def test_torchscript_and_int8_exports_take_the_models_4_bands(trained):
    from segdense.config.export_job import export_job
    from segdense.inference import load_bundle
    from segdense.inference.onnx_model import onnx_session
    from test_export import compose_export

    _, checkpoint, tmp = trained
    results = export_job(compose_export([f"checkpoint={checkpoint}", f"output={tmp / 'model.ts'}",
                                         "format=torchscript", "verify_images=0"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still the portable format
        scripted = torch.jit.load(str(tmp / "model.ts"))
    assert results is not None and scripted(torch.zeros(1, 4, 32, 32)).shape == (1, 2, 32, 32)
    output = tmp / "model.int8.onnx"
    export_job(compose_export([f"checkpoint={checkpoint}", f"output={output}", "quantize=int8", "calibration=2",
                               "eval_images=2", "verify_images=0", "force=true"]))
    assert onnx_session(output).get_inputs()[0].shape[1] == 4
    assert load_bundle(output).model(torch.zeros(1, 4, 32, 32)).shape == (1, 2, 32, 32)


def test_evaluating_and_calibrating_on_images_of_another_band_count_name_the_file(trained, tmp_path):
    from segdense.config.eval_job import evaluate_job
    from segdense.config.export_job import export_job
    from segdense.data import DatasetFileError
    from segdense.errors import UserError
    from test_eval import compose_eval
    from test_export import compose_export

    _, checkpoint, _ = trained
    other = write_folder(tmp_path / "three", count=2, bands=3)
    with pytest.raises(DatasetFileError, match=r"s0.tif: image has 3 band\(s\) but the model takes in_channels=4"):
        evaluate_job(compose_eval([f"checkpoint={checkpoint}", "dataset=folder", f"dataset.root={other}",
                                   "dataset.class_names=[low,high]", "split=all", "progress=false", "device=cpu", "num_workers=0",
                                   f"output_dir={tmp_path / 'eval'}"]))
    with pytest.raises(UserError, match=r"s0.tif: image has 3 band\(s\) but the model takes in_channels=4"):
        export_job(compose_export([f"checkpoint={checkpoint}", f"output={tmp_path / 'm.int8.onnx'}",
                                   "quantize=int8", "calibration=2", f"calibration_dir={other / 'images'}",
                                   "eval_images=2", "verify_images=0"]))
