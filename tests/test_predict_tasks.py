"""Predictions of binary and multilabel models: the task's sigmoid and threshold make the labels, and the label
files are a 0/1 palette PNG (binary) or a (H, W, C) TIFF or one PNG per class (multilabel)."""
import numpy as np
import tifffile
from PIL import Image

from segdense.inference import Predictor
from segdense.inference.files import predict_files

from task_fixtures import Ramps, binary_checkpoint, multilabel_checkpoint, ramp_probabilities  # noqa: F401


def image(h=20, w=30):
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_a_binary_predictor_labels_the_pixels_whose_sigmoid_passes_the_threshold():
    predictor = Predictor.from_model(Ramps(1), ["background", "road"], task={"name": "binary", "threshold": 0.3},
                                     device="cpu")
    expected = ramp_probabilities(20, 30)[0]
    assert np.array_equal(predictor.predict(image()), (expected > 0.3).long().numpy())
    assert (predictor.predict(image()) != (expected > 0.5).long().numpy()).any()  # the threshold mattered
    proba = predictor.predict_proba(image())
    assert proba.shape == (1, 20, 30) and np.allclose(proba[0], expected.numpy(), atol=1e-6)


def test_a_multilabel_predictor_labels_every_class_on_its_own():
    predictor = Predictor.from_model(Ramps(2), ["wide", "tall"], task={"name": "multilabel", "threshold": 0.6},
                                     device="cpu")
    expected = ramp_probabilities(20, 30)
    labels = predictor.predict(image())
    assert labels.shape == (2, 20, 30) and np.array_equal(labels, (expected > 0.6).long().numpy())
    assert ((labels[0] == 1) & (labels[1] == 1)).any() and ((labels[0] == 1) & (labels[1] == 0)).any()
    assert np.allclose(predictor.predict_proba(image()), expected.numpy(), atol=1e-6)


def predicted_files(tmp_path, predictor, **kwargs):
    path = tmp_path / "in" / "a.png"
    path.parent.mkdir()
    Image.fromarray(image()).save(path)
    report = predict_files(predictor, [path], tmp_path / "out", progress=False, save_proba=True, **kwargs)
    assert report.ok and report.written == [path]
    return tmp_path / "out"


def test_binary_predictions_are_a_0_1_palette_png_and_a_foreground_probability(tmp_path):
    predictor = Predictor.from_model(Ramps(1), ["background", "road"], palette=[[0, 0, 0], [255, 255, 255]],
                                     task={"name": "binary", "threshold": 0.3}, device="cpu")
    out = predicted_files(tmp_path, predictor)
    png = Image.open(out / "a.png")
    assert png.mode == "P" and png.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
    assert np.array_equal(np.asarray(png), predictor.predict(image()))
    assert set(np.unique(np.asarray(png))) == {0, 1}
    proba = np.load(out / "a_proba.npy")
    assert proba.dtype == np.float16 and proba.shape == (1, 20, 30)
    assert np.allclose(proba[0], ramp_probabilities(20, 30)[0].numpy(), atol=1e-3)
    assert (out / "a_overlay.png").is_file()


def test_multilabel_predictions_are_one_tiff_with_a_band_per_class(tmp_path):
    predictor = Predictor.from_model(Ramps(2), ["wide", "tall"], task={"name": "multilabel"}, device="cpu")
    out = predicted_files(tmp_path, predictor)
    bands = tifffile.imread(out / "a.tif")
    assert bands.shape == (20, 30, 2) and bands.dtype == np.uint8
    assert np.array_equal(np.moveaxis(bands, -1, 0), predictor.predict(image()))
    assert np.allclose(np.load(out / "a_proba.npy"), ramp_probabilities(20, 30).numpy(), atol=1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "a_overlay.png", "a_proba.npy"]


def test_multilabel_predictions_can_be_one_png_per_class(tmp_path):
    predictor = Predictor.from_model(Ramps(2), ["wide lane", "tall"], task={"name": "multilabel"}, device="cpu")
    out = predicted_files(tmp_path, predictor, multilabel_format="png")
    labels = predictor.predict(image())
    for c, name in enumerate(["wide_lane", "tall"]):
        assert np.array_equal(np.asarray(Image.open(out / f"a_{name}.png")), labels[c])


def test_the_multilabel_overlay_shows_the_mean_colour_of_the_labels_a_pixel_has():
    from segdense.inference.draw import colorize

    labels = np.array([[[1, 1, 0, 255]], [[1, 0, 0, 255]]])  # (2, 1, 4)
    colours = colorize(labels, [[200, 0, 0], [0, 100, 0]])
    assert colours[0].tolist() == [[100, 50, 0], [200, 0, 0], [0, 0, 0], [255, 255, 255]]


def test_infer_tool_writes_a_multilabel_checkpoints_tiffs(multilabel_checkpoint, tmp_path):
    from segdense.config.infer_job import infer_job
    from test_infer import compose_infer

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(image(48, 40)).save(folder / "x.png")
    report = infer_job(compose_infer([f"checkpoint={multilabel_checkpoint}", f"input={folder}",
                                      f"output={tmp_path / 'out'}", "progress=false", "device=cpu"]))
    assert report.ok
    predictor = Predictor.from_checkpoint(multilabel_checkpoint, device="cpu")
    bands = tifffile.imread(tmp_path / "out" / "x.tif")
    assert np.array_equal(np.moveaxis(bands, -1, 0), predictor.predict(folder / "x.png"))


def test_a_binary_checkpoint_predicts_with_its_stored_threshold(binary_checkpoint):
    predictor = Predictor.from_checkpoint(binary_checkpoint, device="cpu")
    assert predictor.task.name == "binary" and predictor.task.threshold == 0.4
    logits = predictor.logits_batch([image(48, 48)])[0]
    assert logits.shape == (1, 48, 48)
    assert np.array_equal(predictor.predict(image(48, 48)), (logits[0].sigmoid() > 0.4).long().numpy())
