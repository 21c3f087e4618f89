"""Streamed scene prediction (segdense.inference.scene) against in-memory slide inference, and reading TIFF windows
(segdense.data.tiff_windows) against reading the whole file."""
import numpy as np
import pytest
import tifffile
import torch
import torch.nn as nn

from segdense.data.tiff_windows import TiffWindows
from segdense.inference import Predictor
from segdense.inference.blending import weight_sums, window_weight
from segdense.inference.scene import StreamedSlide, scene_grid
from segdense.inference.tta import SlideInference, window_starts

NUM_CLASSES = 4


def small_model() -> nn.Module:
    """A seeded two-layer convolution net: logits that depend on each window's borders (zero padding), so that
    windows, blending and their order all show in the result."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, NUM_CLASSES, 5, padding=2))
    model.model_config = {"num_classes": NUM_CLASSES}
    return model


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def streamed(predictor, image, grid, indices=None, save_proba=True):
    read = lambda y0, y1, x0, x1: image[y0:y1, x0:x1]  # noqa: E731
    bands = list(StreamedSlide(predictor, grid, save_proba=save_proba).bands(read, indices or range(grid.num_bands)))
    return bands


def joined(bands):
    labels = np.concatenate([labels for _, labels, _ in bands])
    proba = np.concatenate([proba for _, _, proba in bands], axis=1) if bands[0][2] is not None else None
    return labels, proba


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("size,crop,stride", [((150, 97), (48, 40), (32, 24)), ((61, 130), (64, 48), (20, 48)),
                                              ((90, 90), (40, 40), (13, 17))])
def test_streamed_prediction_equals_in_memory_slide_inference(blend, size, crop, stride):
    predictor = Predictor.from_model(small_model(), device="cpu", mode="slide", crop_size=crop, stride=stride,
                                     blend=blend, batch_size=3)
    image = scene(*size)
    labels, proba = joined(streamed(predictor, image, scene_grid(*size, crop, stride, blend)))
    expected = predictor.logits_batch([image])[0]
    assert (labels == expected.argmax(0).numpy()).all()
    np.testing.assert_allclose(proba, expected.softmax(0).numpy(), rtol=0, atol=1e-5)
    assert len(np.unique(labels)) > 1


@pytest.mark.parametrize("task,channels", [("binary", 1), ("multilabel", NUM_CLASSES)])
def test_streamed_binary_and_multilabel_equal_in_memory_slide_inference(task, channels):
    """The logits summed are the task's (binary: one), labels and probabilities are the task's: a binary scene is
    no argmax over one channel (all zeros), a multilabel one has a 0/1 band per class."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, channels, 5, padding=2))
    names = ["background", "foreground"] if task == "binary" else [f"c{i}" for i in range(channels)]
    predictor = Predictor.from_model(model, class_names=names, task={"name": task, "threshold": 0.45}, device="cpu",
                                     mode="slide", crop_size=(40, 48), stride=(24, 30), blend="gaussian",
                                     batch_size=3)
    image = scene(110, 130)
    bands = streamed(predictor, image, scene_grid(110, 130, (40, 48), (24, 30), "gaussian"))
    labels = np.concatenate([labels for _, labels, _ in bands], axis=-2)
    proba = np.concatenate([proba for _, _, proba in bands], axis=1)
    expected = predictor.logits_batch([image])[0][None]
    assert np.array_equal(labels, predictor.task.labels(expected)[0].numpy())
    np.testing.assert_allclose(proba, predictor.task.activation(expected)[0].numpy(), rtol=0, atol=1e-5)
    assert 0.05 < labels.mean() < 0.95


def test_bands_computed_alone_equal_bands_computed_in_one_pass():
    predictor = Predictor.from_model(small_model(), device="cpu", batch_size=2)
    image, grid = scene(130, 70), scene_grid(130, 70, (40, 40), (12, 30), "gaussian")  # 4 rows of windows overlap
    whole = streamed(predictor, image, grid)
    assert grid.num_bands == len(whole) > 5
    for part in ([3, 4], [0, 5, 6], [grid.num_bands - 1]):
        for k, labels, proba in streamed(predictor, image, grid, part):
            assert np.array_equal(labels, whole[k][1]) and np.array_equal(proba, whole[k][2])  # bit for bit


def test_gaussian_blend_weights_centre_over_border_and_mean_counts_windows():
    weight = window_weight(9, 8, "gaussian")
    assert weight.max() == weight[4, 3] == weight[4, 4] and weight[0, 0] < 0.01
    assert torch.allclose(weight, weight.flip(0)) and torch.allclose(weight, weight.flip(1))
    counts = weight_sums(10, 4, window_starts(10, 4, 3), "mean")
    assert counts.tolist() == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1]


def test_mean_blend_keeps_slide_inference_as_it_was():
    model, images = small_model().eval(), torch.randn(2, 3, 50, 41)
    slide = SlideInference((32, 24), (20, 11))
    total, count = torch.zeros(2, NUM_CLASSES, 50, 41), torch.zeros(1, 1, 50, 41)
    with torch.no_grad():
        for y in window_starts(50, 32, 20):
            for x in window_starts(41, 24, 11):
                total[:, :, y:y + 32, x:x + 24] += model(images[:, :, y:y + 32, x:x + 24])
                count[:, :, y:y + 32, x:x + 24] += 1
        torch.testing.assert_close(slide(model, images), total / count, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layout", [dict(tile=(32, 48), compression="zlib"), dict(tile=(32, 32)),
                                    dict(rowsperstrip=7, compression="zlib"), dict(rowsperstrip=5), dict()])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_windows_equal_the_whole_file(tmp_path, layout, dtype):
    image = scene(100, 130).astype(dtype) * (1 if dtype == np.uint8 else 257)
    tifffile.imwrite(tmp_path / "s.tif", image, photometric="rgb", **layout)
    with TiffWindows(tmp_path / "s.tif") as windows:
        assert windows.shape == (100, 130, 3) and windows.dtype == dtype and windows.read_note is None
        for y0, y1, x0, x1 in [(0, 100, 0, 130), (13, 50, 77, 129), (99, 100, 0, 1), (31, 65, 33, 97)]:
            assert np.array_equal(windows.read(y0, y1, x0, x1), image[y0:y1, x0:x1])


def test_tiff_stored_as_band_planes_is_read_whole_and_says_so(tmp_path, caplog):
    planes = np.random.default_rng(1).integers(0, 4000, (4, 60, 70), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", planes, planarconfig="separate", photometric="minisblack")
    with TiffWindows(tmp_path / "p.tif") as windows:
        assert windows.shape == (60, 70, 4)
        assert np.array_equal(windows.read(5, 50, 3, 61), np.moveaxis(planes, 0, -1)[5:50, 3:61])
    assert "4 separate planes; the whole image (0 MB) is read" in caplog.text


def test_tiff_in_large_compressed_segments_is_read_and_says_how_much_each_window_reads(tmp_path, caplog,
                                                                                         monkeypatch):
    import segdense.data.tiff_windows as tiff_windows

    monkeypatch.setattr(tiff_windows, "LARGE_SEGMENT_BYTES", 100 * 130 * 3 - 1)  # one strip of the image is "huge"
    image = scene(100, 130, seed=2)
    tifffile.imwrite(tmp_path / "one_strip.tif", image, photometric="rgb", rowsperstrip=100, compression="zlib")
    tifffile.imwrite(tmp_path / "two_strips.tif", image, photometric="rgb", rowsperstrip=50, compression="zlib")
    with TiffWindows(tmp_path / "one_strip.tif") as windows:
        assert np.array_equal(windows.read(40, 60, 10, 20), image[40:60, 10:20])
        assert windows.read_note == (f"{tmp_path / 'one_strip.tif'}: stored in compressed segments of 100x130 "
                                     "pixels; every window reads and decodes whole segments (0.04 MB each); rewrite "
                                     "it tiled (e.g. tifffile tile=(512, 512)) to read less")
    assert windows.read_note in caplog.text
    with TiffWindows(tmp_path / "two_strips.tif") as windows:  # segments under the threshold: no warning
        assert windows.read_note is None


@pytest.mark.parametrize("task,channels", [("binary", 1), ("multilabel", 3)])
def test_scene_files_of_binary_and_multilabel_models_hold_the_task_s_labels_and_probabilities(tmp_path, task,
                                                                                              channels):
    """predict_scene writes binary labels 0/1 and one probability band; multilabel one 0/1 band per class (bands
    last) and one probability band per class: what the predictor gives the whole image."""
    from segdense.inference.scene_run import predict_scene

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1))
    names = ["background", "foreground"] if task == "binary" else ["a", "b", "c"]
    predictor = Predictor.from_model(model, class_names=names, task={"name": task}, device="cpu")
    image = scene(70, 90)
    tifffile.imwrite(tmp_path / "scene.tif", image)
    predict_scene(predictor, tmp_path / "scene.tif", tmp_path / "out.tif", (70, 90), None, "gaussian", "run",
                  save_proba=True)
    labels, proba = tifffile.imread(tmp_path / "out.tif"), tifffile.imread(tmp_path / "out_proba.tif")
    expected_labels, expected_proba = predictor.predict(image), predictor.predict_proba(image)
    if task == "binary":
        expected_proba = expected_proba[0]
    else:
        expected_labels, expected_proba = np.moveaxis(expected_labels, 0, -1), np.moveaxis(expected_proba, 0, -1)
    assert labels.shape == expected_labels.shape and np.array_equal(labels, expected_labels)
    np.testing.assert_allclose(proba, expected_proba, rtol=0, atol=1e-5)
    assert set(np.unique(labels)) == {0, 1}
