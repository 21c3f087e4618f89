"""Evaluation: whole, slide and multi-scale/flip TTA through the engine's loop; metrics, tables and outputs."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from segdense.runtime import evaluate_loader
from segdense.inference import MultiScaleFlip, SlideInference, build_infer, load_bundle, whole_logits
from segdense.evaluation import (
    DatasetMismatchError, cityscapes_train_to_label_ids, evaluate_model,
)
from segdense.inference.tta import window_starts
from segdense.metrics import SegmentationMetrics, format_metrics_table

from infer_fixtures import TensorDataset, labelled_images, oracle_bundle
from train_utils import CONF

SIZES = [(20, 30), (26, 17), (13, 13)]  # different sizes: batches are padded, padding must be ignored


def compose_eval(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="eval", overrides=list(overrides))


@pytest.mark.parametrize("infer", [
    whole_logits,
    SlideInference(crop_size=8, stride=5),
    MultiScaleFlip(scales=[1.0], flip=True, base=SlideInference(crop_size=[9, 7], stride=[4, 6])),
], ids=["whole", "slide", "slide+flip"])
def test_a_perfect_predictor_scores_one_in_every_mode(infer):
    dataset = TensorDataset(labelled_images(SIZES, 4), [f"c{i}" for i in range(4)])
    bundle = oracle_bundle(4)
    result = evaluate_model(bundle, dataset, infer, torch.device("cpu"), batch_size=2, progress=False)
    assert result["mIoU"] == 1.0 and result["mAcc"] == 1.0 and result["aAcc"] == 1.0
    assert sum(map(sum, result["confusion"])) == sum(h * w for h, w in SIZES)  # padding never counted


def test_per_class_table_on_a_hand_made_case(tmp_path):
    # truth:      0 0 0 0 1 1 2 2      IoU: c0 3/5, c1 2/3, c2 1/2; Acc: c0 3/4, c1 1, c2 1/2; aAcc 6/8
    # prediction: 0 0 0 1 1 1 2 0
    truth = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    prediction = torch.tensor([[0, 0, 0, 1, 1, 1, 2, 0]]).float()
    image = torch.stack([torch.zeros(1, 8), prediction, torch.zeros(1, 8)])  # the oracle reads channel 1
    dataset = TensorDataset([(image, truth)], ["road", "car", "sky"])
    bundle = oracle_bundle(3, channel=1)
    bundle.class_names = ["road", "car", "sky"]
    result = evaluate_model(bundle, dataset, whole_logits, torch.device("cpu"), output_dir=tmp_path, progress=False)
    per_class = {c["name"]: (c["IoU"], c["Acc"]) for c in result["per_class"]}
    expected = {"road": (0.6, 0.75), "car": (2 / 3, 1.0), "sky": (0.5, 0.5)}
    assert per_class.keys() == expected.keys()
    for name, (iou, acc) in expected.items():
        assert per_class[name] == (pytest.approx(iou), pytest.approx(acc)), name
    assert result["aAcc"] == pytest.approx(0.75)
    assert result["mIoU"] == pytest.approx((0.6 + 2 / 3 + 0.5) / 3)
    table = format_metrics_table(result)
    assert "road" in table and " 60.00" in table and " 66.67" in table
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert {k: written["per_class"][2][k] for k in ("name", "IoU", "Acc")} == {"name": "sky", "IoU": 0.5, "Acc": 0.5}
    assert written["confusion"] == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    confusion_png = Image.open(tmp_path / "confusion.png")
    assert confusion_png.mode == "RGB" and min(confusion_png.size) > 3 * 28


def test_slide_windows_cover_the_image_and_end_flush():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 3) == [0]


def test_slide_with_a_window_as_large_as_the_image_equals_whole(tiny_checkpoint):
    model = load_bundle(tiny_checkpoint).model
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        assert torch.equal(SlideInference(crop_size=[40, 52])(model, x), whole_logits(model, x))
        assert torch.allclose(build_infer("whole", scales=[1.0], flip=True)(model, x),
                              (whole_logits(model, x) + whole_logits(model, x.flip(-1)).flip(-1)) / 2)
        tta = build_infer("slide", crop_size=32, stride=24, scales=[0.8, 1.25], min_size=32)
        assert tta(model, x).shape == (1, 5, 40, 52)


def _resized(t, size):
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)


def test_slide_logits_are_the_hand_computed_average_of_the_windows(tiny_checkpoint):
    model = load_bundle(tiny_checkpoint).model
    x = torch.randn(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = SlideInference(crop_size=32, stride=24)(model, x)
        # windows start at rows 0, 8 and columns 0, 20 (the last ones flush with the edges)
        total, count = torch.zeros(2, 5, 40, 52), torch.zeros(40, 52)
        for y in (0, 8):
            for x0 in (0, 20):
                total[:, :, y:y + 32, x0:x0 + 32] += model(x[:, :, y:y + 32, x0:x0 + 32])
                count[y:y + 32, x0:x0 + 32] += 1
    assert count.min() == 1 and count.max() == 4
    torch.testing.assert_close(got, total / count, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, whole_logits(model, x), atol=1e-3)  # windows really differ from one pass


def test_multi_scale_flip_logits_are_the_hand_computed_average_of_every_view(tiny_checkpoint):
    model = load_bundle(tiny_checkpoint).model
    x = torch.randn(1, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = build_infer("whole", scales=[0.75, 1.5], flip=True)(model, x)
        views = []
        for h, w in ((30, 39), (60, 78)):  # round(40 * s), round(52 * s)
            scaled = _resized(x, (h, w))
            views.append(_resized(model(scaled), (40, 52)))
            views.append(_resized(model(scaled.flip(-1)).flip(-1), (40, 52)))
    torch.testing.assert_close(got, sum(views) / 4, rtol=1e-5, atol=1e-5)


def test_eval_tool_whole_slide_and_tta_give_sane_metrics(tiny_checkpoint, tmp_path):
    from segdense.config.eval_job import evaluate_job

    results = {}
    for mode, extra in [("whole", []), ("slide", ["crop_size=[32,32]", "stride=[24,24]"]),
                        ("tta", ["scales=[0.75,1.25]", "flip=true"])]:
        cfg = compose_eval([f"checkpoint={tiny_checkpoint}", "progress=false", "num_workers=0",
                            f"output_dir={tmp_path / mode}", "mode=" + ("slide" if mode == "slide" else "whole"),
                            *extra])
        results[mode] = evaluate_job(cfg)
        written = json.loads((tmp_path / mode / "metrics.json").read_text())
        assert written["num_images"] == 8 and written["dataset"] == "synthetic"  # the training dataset, val split
        assert [c["name"] for c in written["per_class"]] == ["background", "circle", "rectangle", "triangle", "ring"]
    labelled = {sum(map(sum, r["confusion"])) for r in results.values()}
    assert len(labelled) == 1 and 0.9 * 8 * 48 * 48 < labelled.pop() <= 8 * 48 * 48  # labels' own resolution
    for mode, r in results.items():
        confusion = torch.tensor(r["confusion"], dtype=torch.float64)
        iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag())
        assert r["mIoU"] == pytest.approx(float(iou.nanmean())), mode
        written = json.loads((tmp_path / mode / "metrics.json").read_text())
        assert written["mIoU"] == pytest.approx(r["mIoU"]) and written["confusion"] == r["confusion"], mode
    # The tool's whole-image numbers are the engine loop's on the checkpoint's own dataset and eval pipeline.
    from segdense.data import SyntheticShapes, build_dataloader, build_transforms

    bundle = load_bundle(tiny_checkpoint)
    val = SyntheticShapes(split="val", num_samples=8, image_size=48, transform=build_transforms(bundle.eval_pipeline))
    direct = evaluate_loader(bundle.model, build_dataloader(val, 4, train=False), SegmentationMetrics(5, bundle.class_names),
                      torch.device("cpu"))
    assert results["whole"]["confusion"] == direct["confusion"]
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["infer"] == "whole"
    assert "SlideInference" in json.loads((tmp_path / "slide" / "metrics.json").read_text())["infer"]
    assert json.loads((tmp_path / "tta" / "metrics.json").read_text())["infer"] == (
        "MultiScaleFlip(scales=[0.75, 1.25], flip=True, base=whole)")


def test_eval_dataset_override_and_saved_predictions(tiny_checkpoint, tmp_path):
    from segdense.config.eval_job import evaluate_job

    cfg = compose_eval([f"checkpoint={tiny_checkpoint}", "dataset=synthetic", "dataset.num_samples=3",
                        "dataset.image_size=40", "split=val", "progress=false", "num_workers=0",
                        f"output_dir={tmp_path}", f"save_predictions={tmp_path / 'preds'}"])
    assert cfg.batch_size == 4 and cfg.crop_size is None  # the dataset file's training recipe does not leak in
    result = evaluate_job(cfg)
    assert 0.9 * 3 * 40 * 40 < sum(map(sum, result["confusion"])) <= 3 * 40 * 40
    colors = sorted((tmp_path / "preds" / "color").glob("*.png"))
    labels = sorted((tmp_path / "preds" / "labels").glob("*.png"))
    assert [p.name for p in labels] == ["000000.png", "000001.png", "000002.png"] and len(colors) == 3
    raw = np.asarray(Image.open(labels[0]))
    assert raw.shape == (40, 40) and raw.max() < 5
    assert np.asarray(Image.open(colors[0]).convert("RGB")).shape == (40, 40, 3)


def test_cityscapes_predictions_are_written_as_label_ids():
    table = cityscapes_train_to_label_ids()
    assert table[[0, 1, 10, 13, 18, 255]].tolist() == [7, 8, 23, 26, 33, 0]  # road, sidewalk, sky, car, bicycle


def test_metrics_of_the_loop_and_of_evaluate_model_agree(tiny_checkpoint):
    from segdense.data import SyntheticShapes, build_dataloader

    bundle = load_bundle(tiny_checkpoint)
    dataset = SyntheticShapes(split="val", num_samples=4, image_size=48)
    metrics = SegmentationMetrics(5, bundle.class_names)
    direct = evaluate_loader(bundle.model, build_dataloader(dataset, 2, train=False), metrics, torch.device("cpu"))
    ours = evaluate_model(bundle, dataset, whole_logits, torch.device("cpu"), batch_size=3, progress=False)
    assert ours["confusion"] == direct["confusion"]


def test_a_dataset_with_other_classes_is_refused(tmp_path):
    dataset = TensorDataset(labelled_images([(8, 8)], 2), ["a", "b"])
    with pytest.raises(DatasetMismatchError, match="has 2 classes but the checkpoint oracle predicts 4"):
        evaluate_model(oracle_bundle(4), dataset, whole_logits, torch.device("cpu"), output_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_cityscapes_predictions_are_saved_as_label_ids_for_the_server(tmp_path):
    from segdense.data.cityscapes import CLASS_NAMES

    truth = torch.tensor([[0, 13, 18, 10]])  # road, car, bicycle, sky as trainIds
    image = torch.stack([truth.float(), torch.zeros(1, 4), torch.zeros(1, 4)])
    dataset = TensorDataset([(image, truth)], CLASS_NAMES)
    bundle = oracle_bundle(19)
    bundle.class_names = list(CLASS_NAMES)
    evaluate_model(bundle, dataset, whole_logits, torch.device("cpu"), save_predictions=tmp_path,
                   dataset_name="cityscapes", progress=False)
    assert np.asarray(Image.open(tmp_path / "labels" / "000000.png")).tolist() == [[7, 26, 33, 23]]


FIVE = ["background", "circle", "rectangle", "triangle", "ring"]


def test_saved_predictions_keep_the_sub_folders_of_same_named_images(tiny_checkpoint, tmp_path):
    from segdense.data import FolderDataset

    from data_fixtures import make_folder

    make_folder(tmp_path / "data", ["x/1"], size=(20, 30), num_classes=5)
    make_folder(tmp_path / "data", ["y/1"], size=(26, 18), num_classes=5, seed=4)
    dataset = FolderDataset(tmp_path / "data", FIVE)
    evaluate_model(load_bundle(tiny_checkpoint), dataset, whole_logits, torch.device("cpu"),
                   save_predictions=tmp_path / "preds", progress=False)
    for kind in ("labels", "color"):
        assert Image.open(tmp_path / "preds" / kind / "x" / "1.png").size == (30, 20)
        assert Image.open(tmp_path / "preds" / kind / "y" / "1.png").size == (18, 26)
        assert not (tmp_path / "preds" / kind / "1.png").exists()


def test_images_without_masks_are_counted_named_and_logged_not_silently_left_out(tiny_checkpoint, tmp_path, caplog):
    from segdense.data import FolderDataset

    from data_fixtures import make_folder

    root = tmp_path / "data"
    make_folder(root, ["a", "b", "no_mask", "no_image"], size=(20, 30), num_classes=5)
    (root / "masks" / "no_mask.png").unlink()
    (root / "images" / "no_image.png").unlink()
    dataset = FolderDataset(root, FIVE)
    with caplog.at_level("WARNING", logger="segdense.eval"):
        result = evaluate_model(load_bundle(tiny_checkpoint), dataset, whole_logits, torch.device("cpu"),
                                output_dir=tmp_path / "out", progress=False)
    assert sum(map(sum, result["confusion"])) <= 2 * 20 * 30  # the two complete pairs were scored
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["num_images"] == 2 and written["num_left_out"] == 2
    assert {(item["file"], item["problem"]) for item in written["left_out"]} == {
        (str(root / "images" / "no_mask.png"), "image has no mask"),
        (str(root / "masks" / "no_image.png"), "mask has no image"),
    }
    assert "2 file(s) of dataset" in caplog.text and "no_mask.png" in caplog.text and "no_image.png" in caplog.text
