"""Streamed scene prediction (segdense.inference.scene_run) against MONAI's ``sliding_window_inference`` on the same
model, input, windows and Gaussian blending: the peer that ``tools/benchmark.py --preset scene`` measures it beside."""
import numpy as np
import pytest
import tifffile
import torch
import torch.nn as nn

from benchmarks.scene import monai_overlap
from segdense.inference import Predictor
from segdense.inference.blending import SIGMA_SCALE, window_weight
from segdense.inference.scene_run import predict_scene

inferers = pytest.importorskip("monai.inferers", reason="MONAI is the peer compared here (pip install -e '.[test]')")

NUM_CLASSES = 4
SIDE, CROP, STRIDE = 256, 64, 42  # 42: segdense's default stride for a 64 window (two thirds)


def small_model() -> nn.Module:
    """Seeded convolutions with zero padding: each window's logits depend on its borders, so window placement and
    blending show in the result."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 5, padding=2))
    model.model_config = {"num_classes": NUM_CLASSES}
    return model.eval()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """segdense's streamed labels and probabilities of a 256^2 TIFF, and the input tensor it normalised."""
    folder = tmp_path_factory.mktemp("scene")
    image = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    tifffile.imwrite(folder / "scene.tif", image, tile=(64, 64), photometric="rgb")
    predictor = Predictor.from_model(small_model(), device="cpu", batch_size=3)
    predict_scene(predictor, folder / "scene.tif", folder / "labels.tif", (CROP, CROP), None, "gaussian", "test",
                  save_proba=True)
    labels, proba = tifffile.imread(folder / "labels.tif"), tifffile.imread(folder / "labels_proba.tif")
    return predictor, predictor.preprocess(image)[1][None], labels, np.moveaxis(proba, -1, 0)


def monai_proba(predictor, inputs, **blend):
    with torch.inference_mode():
        logits = inferers.sliding_window_inference(inputs, (CROP, CROP), 3, predictor.model,
                                                   overlap=monai_overlap(CROP, STRIDE), **blend)
    return logits[0].softmax(0).numpy()


def test_monai_overlap_gives_segdense_stride():
    from monai.inferers.utils import _get_scan_interval

    for crop, stride in ((64, 42), (512, 341), (500, 333), (97, 1), (97, 97), (384, 256)):
        assert _get_scan_interval((10 * crop, 10 * crop), (crop, crop), 2, (monai_overlap(crop, stride),) * 2) == (
            stride, stride)


def test_streamed_prediction_equals_monai_with_the_same_window_weights(both):
    predictor, inputs, labels, proba = both
    expected = monai_proba(predictor, inputs, roi_weight_map=window_weight(CROP, CROP, "gaussian"))
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-5)
    assert (labels == expected.argmax(0)).all() and len(np.unique(labels)) == NUM_CLASSES


def test_monai_gaussian_mode_is_segdense_weights_floored_at_a_thousandth(both):
    # MONAI's own map (mode="gaussian", sigma_scale=0.125) is the same Gaussian with every weight below 1e-3 raised
    # to 1e-3, where segdense's falls to 3e-4 at a window's edges and 1e-7 at its corners: that floor is the whole
    # difference between the two blends, and it moves the labels of a few pixels seen only near window borders.
    predictor, inputs, labels, _ = both
    expected = monai_proba(predictor, inputs, mode="gaussian", sigma_scale=SIGMA_SCALE)
    floored = window_weight(CROP, CROP, "gaussian").clamp(min=1e-3)
    np.testing.assert_allclose(monai_proba(predictor, inputs, roi_weight_map=floored), expected, rtol=0, atol=1e-5)
    differ = (labels != expected.argmax(0)).mean()
    assert 0 < differ < 0.01
