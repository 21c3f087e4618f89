"""tools/eval.py report=true: per_image.csv and report/index.html, checked against independent computations."""
import csv
import math

import numpy as np
import pytest
import torch

from segdense.inference import whole_logits
from segdense.evaluation import evaluate_model

from html_check import check_page
from infer_fixtures import TensorDataset, labelled_images, oracle_bundle

NUM_CLASSES = 4
SIZES = [(12, 16), (10, 10), (14, 9), (12, 12), (8, 20)]


def corrupted_dataset():
    """The oracle predicts channel 0: image k has its top 2k rows shifted to the next class (wrong there)."""
    pairs = []
    for k, (image, mask) in enumerate(labelled_images(SIZES, NUM_CLASSES, seed=3)):
        image = image.clone()
        image[0, : 2 * k] = (mask[: 2 * k] + 1) % NUM_CLASSES
        pairs.append((image, mask))
    mask0 = pairs[0][1].clone()
    mask0[0, :5] = 255  # a few ignored pixels
    pairs[0] = (pairs[0][0], mask0)
    return TensorDataset(pairs, [f"class{i}" for i in range(NUM_CLASSES)])


def expected_scores(dataset):
    """Pixel accuracy and per-class IoU of each image, with plain numpy loops."""
    rows = []
    for image, mask in dataset.pairs:
        pred = image[0].round().long().numpy()
        label = mask.numpy()
        valid = label != 255
        ious = []
        for c in range(NUM_CLASSES):
            inter = np.sum((pred == c) & (label == c) & valid)
            union = np.sum(((pred == c) | (label == c)) & valid)
            ious.append(inter / union if union else math.nan)
        rows.append((np.sum((pred == label) & valid) / valid.sum(), ious))
    return rows


def test_per_image_csv_holds_each_images_accuracy_and_class_iou(tmp_path):
    dataset = corrupted_dataset()
    evaluate_model(oracle_bundle(NUM_CLASSES), dataset, whole_logits, torch.device("cpu"), batch_size=2,
                   output_dir=tmp_path, progress=False, report=True, report_images=3)
    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(len(SIZES)))
    for row, (acc, ious) in zip(rows, expected_scores(dataset)):
        assert float(row["pixel_acc"]) == pytest.approx(acc, abs=1e-6)
        for c, iou in enumerate(ious):
            cell = row[f"IoU_class{c}"]
            assert (cell == "" and math.isnan(iou)) or float(cell) == pytest.approx(iou, abs=1e-6)
        assert float(row["mIoU"]) == pytest.approx(np.nanmean(ious), abs=1e-6)
    assert rows[0]["pixels"] == str(12 * 16 - 5)


def test_report_page_shows_the_metrics_confusion_and_worst_images(tmp_path):
    dataset = corrupted_dataset()
    result = evaluate_model(oracle_bundle(NUM_CLASSES), dataset, whole_logits, torch.device("cpu"), batch_size=2,
                            output_dir=tmp_path, progress=False, report=True, report_images=3)
    page = check_page(tmp_path / "report" / "index.html")
    summary = page.tables["summary"]
    assert summary[0] == ["mIoU", "mAcc", "aAcc", "images"]
    assert summary[1] == [f"{100 * result[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc")] + [str(len(SIZES))]
    per_class = page.tables["per-class"]
    assert per_class[1:] == [[c["name"], f"{100 * c['IoU']:.2f}", f"{100 * c['Acc']:.2f}"]
                             for c in result["per_class"]]
    assert "confusion.png" in page.images
    # the three lowest-mIoU images, worst first, four pictures each
    mious = [np.nanmean(ious) for _, ious in expected_scores(dataset)]
    worst = sorted(range(len(SIZES)), key=lambda k: mious[k])[:3]
    gallery = [src for src in page.images if src.startswith("gallery/")]
    assert len(gallery) == 12 and gallery[:4] == [f"gallery/000_{k}.png" for k in ("image", "label", "prediction",
                                                                                     "error")]
    text = (tmp_path / "report" / "index.html").read_text()
    positions = [text.index(f"<b>{rank + 1}. memory[{k}]</b>") for rank, k in enumerate(worst)]
    assert positions == sorted(positions)
    from PIL import Image

    error = np.asarray(Image.open(tmp_path / "report" / "gallery" / "000_error.png"))
    k = worst[0]
    h, w = SIZES[k]
    assert error.shape == (h, w, 3)
    assert (error[: 2 * k] == [230, 30, 30]).all() and (error[2 * k:] == [40, 40, 40]).all()


def test_eval_tool_report_true_writes_both(tiny_checkpoint, tmp_path, capsys):
    from segdense.config.eval_job import evaluate_job

    from test_eval import compose_eval

    result = evaluate_job(compose_eval([f"checkpoint={tiny_checkpoint}", f"output_dir={tmp_path}", "report=true",
                                        "report_images=2", "progress=false"]))
    page = check_page(tmp_path / "report" / "index.html")
    assert len([s for s in page.images if s.startswith("gallery/")]) == 8
    assert page.tables["summary"][1][0] == f"{100 * result['mIoU']:.2f}"
    assert f"report: {tmp_path / 'report' / 'index.html'}" in capsys.readouterr().out
    assert (tmp_path / "per_image.csv").read_text().count("\n") == 1 + 8  # header + the 8 val images


def test_report_without_an_output_directory_is_refused():
    with pytest.raises(ValueError, match="report=true needs an output directory"):
        evaluate_model(oracle_bundle(NUM_CLASSES), corrupted_dataset(), whole_logits, torch.device("cpu"),
                       report=True)


def test_confusion_chart_grows_with_the_classes_so_25_stay_readable(tmp_path):
    from PIL import Image

    from segdense.reports.plots import confusion_chart

    sizes = {}
    for n in (5, 25):
        confusion = np.eye(n) * 90 + 1
        confusion_chart(confusion, [f"a_long_class_name_{i}" for i in range(n)], tmp_path / f"{n}.png")
        sizes[n] = Image.open(tmp_path / f"{n}.png").size
    # at least ~30 pixels per class along each axis at 25 classes (the 5-class figure has a minimum size)
    assert min(sizes[25]) >= 25 * 30 and sizes[25][0] > 1.5 * sizes[5][0]
