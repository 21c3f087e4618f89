"""Evaluating binary and multilabel checkpoints with saved predictions and the HTML report: the files hold the
task's labels, and the per-image scores are the task's scores of each image alone."""
import csv

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from segdense.data import build_dataset, build_transforms
from segdense.evaluation import evaluate_model
from segdense.inference.loading import load_bundle
from segdense.metrics import SegmentationMetrics
from segdense.runtime import whole_logits

from task_fixtures import binary_checkpoint, multilabel_checkpoint  # noqa: F401


def evaluated(checkpoint, dataset_name, tmp_path):
    bundle = load_bundle(checkpoint)
    dataset = build_dataset(dataset_name, "val", num_samples=3, image_size=48,
                            transform=build_transforms(bundle.eval_pipeline))
    result = evaluate_model(bundle, dataset, whole_logits, torch.device("cpu"), output_dir=tmp_path / "eval",
                            save_predictions=tmp_path / "pred", report=True, report_images=2, progress=False)
    return bundle, dataset, result


def labels_of(bundle, dataset, i):
    with torch.no_grad():
        return bundle.task.labels(bundle.model.eval()(dataset[i][0][None]))[0]


def per_image_rows(tmp_path):
    with open(tmp_path / "eval" / "per_image.csv") as f:
        return list(csv.DictReader(f))


def alone(bundle, labels, mask):
    metrics = SegmentationMetrics(bundle.num_classes, task=bundle.task)
    metrics.update(labels[None], mask[None])
    return metrics.compute()


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_saved_predictions_and_the_report_follow_the_task(task, tmp_path, request):
    checkpoint = request.getfixturevalue(f"{task}_checkpoint")
    bundle, dataset, result = evaluated(checkpoint, f"synthetic_{task}", tmp_path)
    rows = per_image_rows(tmp_path)
    assert [c["name"] for c in result["per_class"]] == bundle.task.scored_classes
    for i, row in enumerate(rows):
        labels = labels_of(bundle, dataset, i)
        name = f"{i:06d}"
        if task == "binary":
            saved = np.asarray(Image.open(tmp_path / "pred" / "labels" / f"{name}.png"))
        else:
            saved = np.moveaxis(tifffile.imread(tmp_path / "pred" / "labels" / f"{name}.tif"), -1, 0)
        assert np.array_equal(saved, labels.numpy())
        assert (tmp_path / "pred" / "color" / f"{name}.png").is_file()
        expected = alone(bundle, labels, dataset[i][1])
        assert [k for k in row if k.startswith("IoU_")] == [f"IoU_{n}" for n in bundle.task.scored_classes]
        for c, name_c in enumerate(bundle.task.scored_classes):
            value = expected["per_class"][c]["IoU"]
            assert (row[f"IoU_{name_c}"] == "" if np.isnan(value) else float(row[f"IoU_{name_c}"]) ==
                    pytest.approx(value, abs=1e-6))
    assert not (tmp_path / "eval" / "report" / "confusion.png").exists()
    assert len(list((tmp_path / "eval" / "report" / "gallery").glob("*_error.png"))) == 2


def test_the_multilabel_error_map_marks_a_pixel_wrong_when_any_label_is():
    from segdense.reports.evaluation import CORRECT, IGNORED, WRONG, error_map

    label = np.array([[[1, 0, 255]], [[0, 0, 255]]])
    prediction = np.array([[[1, 0, 0]], [[1, 0, 1]]])
    assert error_map(label, prediction)[0].tolist() == [list(WRONG), list(CORRECT), list(IGNORED)]
