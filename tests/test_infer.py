"""Inference on image files and the Predictor API."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segdense
from segdense.inference.images import ImageReadError, find_images, load_image

from infer_fixtures import write_image
from train_utils import CONF

ROOT = Path(__file__).resolve().parents[1]


def compose_infer(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="infer", overrides=list(overrides))


@pytest.fixture
def mixed_images(tmp_path):
    """Images of every kind in a folder tree, plus one corrupt file; name -> (height, width)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    sizes = {}

    def add(name, array, **kw):
        write_image(folder / name, array, **kw)
        sizes[name] = array.shape[:2]

    add("rgb.jpg", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), quality=90)
    add("gray16.png", rng.integers(0, 65536, (37, 45), dtype=np.uint16))
    add("rgba.png", rng.integers(0, 256, (52, 41, 4), dtype=np.uint8))
    add("sub/gray.tif", rng.integers(0, 256, (44, 44), dtype=np.uint8))
    add("photo.webp", rng.integers(0, 256, (39, 47, 3), dtype=np.uint8))
    add("rgb.png", rng.integers(0, 256, (35, 36, 3), dtype=np.uint8))  # shares the stem of rgb.jpg
    Image.fromarray(rng.integers(0, 256, (33, 60, 3), dtype=np.uint8)).convert("P").save(folder / "palette.bmp")
    sizes["palette.bmp"] = (33, 60)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return folder, sizes


def test_infer_on_a_mixed_folder_writes_every_readable_image_and_reports_the_corrupt_one(tiny_checkpoint, tmp_path,
                                                                                          mixed_images):
    from segdense.config.infer_job import infer_job

    folder, sizes = mixed_images
    out = tmp_path / "out"
    cfg = compose_infer([f"checkpoint={tiny_checkpoint}", f"input={folder}", f"output={out}", "save_proba=true",
                         "progress=false", "batch_size=3"])
    report = infer_job(cfg)
    failed = dict((p.name, why) for p, why in report.failed)
    assert sorted(failed) == ["broken.png", "gray.tif", "gray16.png"] and "cannot be decoded" in failed["broken.png"]
    # an 8-bit RGB model refuses 16-bit data (never scaled to 8 bits) and a 1-band TIFF (its bands are kept)
    assert "uint16 image (values " in failed["gray16.png"] and "max_pixel_value 255" in failed["gray16.png"]
    assert "1 band(s) but the model takes in_channels=3" in failed["gray.tif"]
    for name in ("gray16.png", "sub/gray.tif"):
        del sizes[name]
    assert len(report.written) == len(sizes) and not report.ok
    names = {"rgb.jpg": "rgb_jpg", "rgb.png": "rgb_png", "rgba.png": "rgba", "photo.webp": "photo",
             "palette.bmp": "palette"}
    for source, (h, w) in sizes.items():
        labels = Image.open(out / f"{names[source]}.png")
        assert labels.mode == "P" and labels.size == (w, h)  # palette PNG of class indices at the image's size
        assert np.asarray(labels).max() < 5
        overlay = Image.open(out / f"{names[source]}_overlay.png")
        assert overlay.height >= h and overlay.width > w  # the legend sits on the right
        proba = np.load(out / f"{names[source]}_proba.npy")
        assert proba.shape == (5, h, w) and np.allclose(proba.astype(np.float32).sum(0), 1, atol=1e-2)
        assert (proba.argmax(0) == np.asarray(labels)).mean() > 0.99
    assert not list(out.rglob("broken*"))


def test_existing_outputs_are_kept_unless_overwrite(tiny_checkpoint, tmp_path):
    image = write_image(tmp_path / "a.png", np.full((40, 40, 3), 90, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    (out / "a_overlay.png").write_bytes(b"and me")
    base = [f"checkpoint={tiny_checkpoint}", f"input={image}", f"output={out}", "progress=false"]
    from segdense.config.infer_job import infer_job

    report = infer_job(compose_infer(base))
    assert report.skipped == [image] and (out / "a.png").read_bytes() == b"keep me"
    assert (out / "a_overlay.png").read_bytes() == b"and me"
    report = infer_job(compose_infer(base + ["overwrite=true"]))
    assert report.written == [image] and Image.open(out / "a.png").size == (40, 40)


def test_infer_tool_exits_non_zero_after_finishing_the_readable_images(tiny_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "good.png", np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "in" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "infer.py"), f"checkpoint={tiny_checkpoint}",
                          f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", "progress=false"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "bad.jpg" in run.stdout + run.stderr and "Traceback" not in run.stderr
    assert (tmp_path / "out" / "good.png").is_file()


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 30, 3), np.uint8)
    array[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    upright = load_image(tmp_path / "rotated.jpg")
    assert upright.shape == (30, 20, 3)
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the white left band is now on top


def test_16_bit_files_keep_their_values_and_float_arrays_are_scaled(tmp_path):
    values = np.array([[0, 3000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    read = load_image(tmp_path / "g16.png")
    assert read.dtype == np.uint16 and read.shape == (1, 3, 1) and read[0, :, 0].tolist() == [0, 3000, 65535]
    assert load_image(np.array([[0.0, 0.5, 1.0]]))[0, :, 1].tolist() == [0, 128, 255]
    assert load_image(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)


def test_bad_images_and_inputs_get_one_clear_error(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match=r"array of shape \(2, 3, 4, 5\) is not an image"):
        load_image(np.zeros((2, 3, 4, 5)))
    write_image(tmp_path / "b.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in find_images(str(tmp_path / "*.png"))] == ["a.png", "b.png"]
    with pytest.raises(FileNotFoundError, match="matches no files"):
        find_images(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        find_images(tmp_path / "empty")


def test_predictor_accepts_paths_pil_images_and_arrays_alike(tiny_checkpoint, tmp_path):
    predictor = segdense.Predictor.from_checkpoint(tiny_checkpoint, device="auto")
    array = np.random.default_rng(1).integers(0, 256, (45, 51, 3), dtype=np.uint8)
    path = write_image(tmp_path / "x.png", array)
    from_path = predictor.predict(path)
    assert from_path.shape == (45, 51) and from_path.dtype == np.int64
    assert np.array_equal(from_path, predictor.predict(Image.open(path)))
    assert np.array_equal(from_path, predictor.predict(array))
    proba = predictor.predict_proba(str(path))
    assert proba.shape == (5, 45, 51) and np.allclose(proba.sum(0), 1, atol=1e-5)
    assert np.array_equal(proba.argmax(0), from_path)


def test_batched_prediction_equals_one_by_one(tiny_checkpoint):
    predictor = segdense.Predictor.from_checkpoint(tiny_checkpoint, batch_size=2)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(40, 40, 3), (41, 57, 3), (40, 40, 3)]]
    batched = predictor.predict_batch(images)
    for image, labels in zip(images, batched):
        assert np.array_equal(labels, predictor.predict(image))


def test_images_smaller_than_the_output_stride_are_predicted(tiny_checkpoint):
    predictor = segdense.Predictor.from_checkpoint(tiny_checkpoint)
    assert predictor.predict(np.zeros((3, 5, 3), np.uint8)).shape == (3, 5)
    assert predictor.predict(np.zeros((1, 200), np.uint8)).shape == (1, 200)


def test_predictor_slide_and_tta_keep_the_image_size(tiny_checkpoint):
    predictor = segdense.Predictor.from_checkpoint(tiny_checkpoint, mode="slide", crop_size=[32, 32], stride=[24, 24],
                                                   scales=[0.8, 1.25], flip=True)
    image = np.random.default_rng(6).integers(0, 256, (40, 53, 3), dtype=np.uint8)
    proba = predictor.predict_proba(image)
    assert proba.shape == (5, 40, 53)
    # the predictor runs slide windows inside multi-scale/flip TTA on the normalised image (values: test_eval.py)
    from segdense.inference import MultiScaleFlip, SlideInference

    tensor = predictor.preprocess(image)[1][None]
    with torch.no_grad():
        logits = MultiScaleFlip([0.8, 1.25], flip=True, base=SlideInference([32, 32], [24, 24]),
                                min_size=predictor.min_size)(predictor.model, tensor)
    np.testing.assert_allclose(proba, logits.softmax(1)[0].numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mode must be one of whole, slide"):
        segdense.Predictor.from_checkpoint(tiny_checkpoint, mode="tiles")


def test_import_segdense_needs_no_pillow_or_albumentations():
    code = ("import sys, segdense; segdense.Predictor; segdense.load_model; "
            "print([m for m in ('PIL', 'albumentations', 'hydra') if m in sys.modules])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.stdout.strip() == "[]", run.stderr


def test_overlay_draws_a_legend_of_the_classes_present():
    from segdense.inference.draw import overlay

    palette = [[200, 0, 0], [0, 200, 0], [0, 0, 200]]
    labels = np.zeros((40, 30), np.int64)
    labels[:, 15:] = 2
    picture = overlay(np.zeros((40, 30, 3), np.uint8), labels, palette, ["red", "green", "blue"])
    assert picture.shape[0] >= 40 and picture.shape[1] > 30
    assert picture[0, 0].tolist() == [100, 0, 0]  # image and prediction blended half and half
    legend = {tuple(c) for c in picture[:, 30:].reshape(-1, 3).tolist()}
    assert (200, 0, 0) in legend and (0, 0, 200) in legend and (0, 200, 0) not in legend


def test_a_model_in_memory_can_be_wrapped(tiny_checkpoint):
    model = segdense.load_model(tiny_checkpoint)
    wrapped = segdense.Predictor.from_model(model, device="cpu")
    assert wrapped.class_names == model.class_names and wrapped.palette == model.palette
    image = np.random.default_rng(3).integers(0, 256, (40, 42, 3), dtype=np.uint8)
    assert np.array_equal(wrapped.predict(image), segdense.Predictor.from_checkpoint(tiny_checkpoint).predict(image))


def test_same_named_images_in_different_folders_of_a_glob_keep_their_folders(tiny_checkpoint, tmp_path):
    from segdense.config.infer_job import infer_job

    rng = np.random.default_rng(4)
    shots = tmp_path / "shots"
    for sub, (h, w) in (("a", (40, 48)), ("b/deeper", (44, 36))):
        (shots / sub).mkdir(parents=True)
        write_image(shots / sub / "1.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "out"
    report = infer_job(compose_infer([f"checkpoint={tiny_checkpoint}", f"input={shots}/**/*.png", f"output={out}",
                                      "progress=false"]))
    assert len(report.written) == 2 and report.ok
    assert Image.open(out / "a" / "1.png").size == (48, 40)
    assert Image.open(out / "b" / "deeper" / "1.png").size == (36, 44)
    assert (out / "a" / "1_overlay.png").is_file() and not (out / "1.png").exists()


def test_two_inputs_that_would_write_the_same_output_are_refused_before_writing(tiny_checkpoint, tmp_path):
    from segdense.errors import ConfigError
    from segdense.inference.files import predict_files

    a = write_image(tmp_path / "a.png", np.zeros((40, 40, 3), np.uint8))
    clash = write_image(tmp_path / "a_overlay.png", np.zeros((40, 40, 3), np.uint8))  # its labels: a_overlay.png
    predictor = segdense.Predictor.from_checkpoint(tiny_checkpoint)
    with pytest.raises(ConfigError, match=r"a\.png and .*a_overlay\.png would both write .*a_overlay\.png"):
        predict_files(predictor, [a, clash], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_an_image_interrupted_while_its_outputs_are_made_leaves_none_and_a_rerun_writes_them(tiny_checkpoint,
                                                                                              tmp_path, monkeypatch):
    from segdense.inference import files

    image = write_image(tmp_path / "a.png", np.full((40, 40, 3), 60, np.uint8))
    out = tmp_path / "out"
    base = [f"checkpoint={tiny_checkpoint}", f"input={image}", f"output={out}", "progress=false"]
    from segdense.config.infer_job import infer_job

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the label image was made, before the overlay

    monkeypatch.setattr(files, "overlay", killed)
    with pytest.raises(KeyboardInterrupt):
        infer_job(compose_infer(base))
    assert not list(out.iterdir())  # no outputs, no temporary files
    monkeypatch.undo()
    report = infer_job(compose_infer(base))
    assert report.written == [image] and {p.name for p in out.iterdir()} == {"a.png", "a_overlay.png"}


def test_an_image_with_only_some_outputs_is_reported_not_skipped(tiny_checkpoint, tmp_path):
    from segdense.config.infer_job import infer_job

    image = write_image(tmp_path / "a.png", np.full((40, 40, 3), 60, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"from a run killed between two renames, or the user's")
    report = infer_job(compose_infer([f"checkpoint={tiny_checkpoint}", f"input={image}", f"output={out}",
                                      "progress=false"]))
    assert report.failed and report.failed[0][0] == image and not report.skipped
    assert "missing a_overlay.png" in report.failed[0][1] and "overwrite=true" in report.failed[0][1]
    assert (out / "a.png").read_bytes().startswith(b"from a run") and not (out / "a_overlay.png").exists()


def test_a_group_of_outputs_is_written_all_or_none(tmp_path):
    from segdense.inference.writers import atomic_write_files

    (tmp_path / "blocker").write_text("")  # a folder cannot be created below a file
    with pytest.raises(OSError):
        atomic_write_files({tmp_path / "first.png": b"1", tmp_path / "blocker" / "second.png": b"2"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_overlay_false_writes_only_the_label_image(tiny_checkpoint, tmp_path):
    from segdense.config.infer_job import infer_job

    image = write_image(tmp_path / "a.png", np.full((40, 40, 3), 60, np.uint8))
    out = tmp_path / "out"
    infer_job(compose_infer([f"checkpoint={tiny_checkpoint}", f"input={image}", f"output={out}", "overlay=false",
                             "progress=false"]))
    assert [p.name for p in out.iterdir()] == ["a.png"] and Image.open(out / "a.png").mode == "P"


@pytest.mark.parametrize("array, message", [
    (np.full((4, 4, 3), 2.5, np.float32), r"float image values lie in 2\.5\.\.2\.5; expected \[0, 1\]"),
    (np.full((4, 4, 3), -0.4, np.float64), r"lie in -0\.4\.\.-0\.4; expected \[0, 1\]"),
    (np.array([[-3, 0, 200]], np.int32), r"int32 image values lie in -3\.\.200; this model takes 8-bit RGB"),
    (np.array([[0, 70000]], np.int64), r"lie in 0\.\.70000; this model takes 8-bit RGB \(0\.\.255\)"),
    (np.array([[0, 3999]], np.uint16), r"uint16 image values lie in 0\.\.3999; this model takes 8-bit RGB"),
    (np.array([[-1, 5]], np.int8), r"lie in -1\.\.5"),
], ids=["float-above-1", "float-negative", "int-negative", "int-above-16-bit", "uint16-not-scaled",
        "int8-negative"])
def test_out_of_range_arrays_are_refused_not_clipped(array, message):
    with pytest.raises(ImageReadError, match=message):
        load_image(array)


def test_an_imagenet_normalised_array_is_refused_with_what_to_pass_instead():
    rgb = np.random.default_rng(5).random((6, 7, 3))
    normalised = (rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with pytest.raises(ImageReadError, match="before any normalisation"):
        load_image(normalised)
    assert np.array_equal(load_image(rgb), np.rint(rgb * 255).astype(np.uint8))  # [0, 1] floats are scaled


def test_integer_arrays_in_range_are_read_exactly():
    assert load_image(np.array([[0, 17, 255]], np.int64))[0, :, 0].tolist() == [0, 17, 255]
    assert load_image(np.array([[0, 255]], np.uint16))[0, :, 0].tolist() == [0, 255]


def test_a_broken_exif_block_is_named_in_a_warning(tmp_path, caplog):
    array = np.zeros((20, 30, 3), np.uint8)
    Image.fromarray(array).save(tmp_path / "damaged.jpg", exif=b"Exif\x00\x00not a TIFF structure", quality=95)
    with caplog.at_level("WARNING", logger="segdense.infer"):
        image = load_image(tmp_path / "damaged.jpg")
    assert image.shape == (20, 30, 3)  # still read, as stored
    assert f"{tmp_path / 'damaged.jpg'}: its EXIF block is damaged" in caplog.text
    assert "used as stored, without any EXIF rotation" in caplog.text
    caplog.clear()
    Image.fromarray(array).save(tmp_path / "plain.jpg", quality=95)
    load_image(tmp_path / "plain.jpg")
    assert "EXIF" not in caplog.text  # no EXIF at all is no problem


def test_cmyk_images_are_converted_to_rgb(tmp_path):
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)  # cyan 0, M+Y full: red
    Image.new("CMYK", (6, 4), (0, 0, 0, 255)).save(tmp_path / "black.tif")
    red = load_image(tmp_path / "red.jpg")
    assert red.shape == (4, 6, 3) and red[..., 0].min() > 240 and red[..., 1:].max() < 15
    assert load_image(tmp_path / "black.tif").max() == 0
