"""IoU, Dice (F1), precision and recall of every task against torchmetrics' multiclass, binary and multilabel
versions, the reference implementations, on the same random predictions and labels (with ignored pixels)."""
import math

import pytest
import torch
from torchmetrics import classification as tmc

from segdense.metrics import SegmentationMetrics, format_metrics_table
from segdense.tasks import build_task

IGNORE = 255
SCORES = {"IoU": "JaccardIndex", "Dice": "F1Score", "Precision": "Precision", "Recall": "Recall"}


def reference_scores(kind, average, **kwargs):
    """torchmetrics' {score name: metric} of one kind (Multiclass, Binary, Multilabel)."""
    metrics = {}
    for ours, theirs in SCORES.items():
        cls = getattr(tmc, kind + theirs)
        metrics[ours] = cls(ignore_index=IGNORE, **kwargs) if kind == "Binary" else cls(
            average=average, ignore_index=IGNORE, **kwargs)
    return metrics


def assert_scores_equal(result, per_class_reference, mean_reference):
    for key in SCORES:
        ours = torch.tensor([c[key] for c in result["per_class"]], dtype=torch.float64)
        theirs = per_class_reference[key].compute().double().reshape(-1)
        assert torch.allclose(ours, theirs, atol=1e-6), key
        assert math.isclose(result["m" + key], float(mean_reference[key].compute()), abs_tol=1e-6), key


def random_batches(shape, values, seed, count=3):
    g = torch.Generator().manual_seed(seed)
    for _ in range(count):
        prediction = torch.randint(0, values, shape, generator=g)
        target = torch.randint(0, values, shape, generator=g)
        target[torch.rand(shape, generator=g) < 0.2] = IGNORE
        yield prediction, target


@pytest.mark.parametrize("num_classes", [2, 5, 12])
def test_multiclass_scores_equal_torchmetrics(num_classes):
    task = build_task("multiclass", [f"c{i}" for i in range(num_classes)])
    metrics = SegmentationMetrics(num_classes, task=task)
    per_class = reference_scores("Multiclass", None, num_classes=num_classes)
    means = reference_scores("Multiclass", "macro", num_classes=num_classes)
    for prediction, target in random_batches((2, 9, 13), num_classes, seed=num_classes):
        metrics.update(prediction, target)
        for m in (*per_class.values(), *means.values()):
            m.update(prediction, target)
    assert_scores_equal(metrics.compute(), per_class, means)


def test_binary_scores_equal_torchmetrics_and_score_the_foreground():
    task = build_task("binary", ["background", "cell"], threshold=0.3)
    metrics = SegmentationMetrics(2, task=task)
    reference = reference_scores("Binary", None, threshold=0.3)
    g = torch.Generator().manual_seed(0)
    for _, target in random_batches((2, 11, 7), 2, seed=1):
        logits = torch.randn(2, 1, 11, 7, generator=g)
        metrics.update(logits, target)  # logits: the task's sigmoid and threshold make the labels
        for m in reference.values():
            m.update(logits[:, 0].sigmoid(), target)
    result = metrics.compute()
    assert [c["name"] for c in result["per_class"]] == ["cell"]
    assert_scores_equal(result, reference, reference)


@pytest.mark.parametrize("labels", [2, 4])
def test_multilabel_scores_equal_torchmetrics(labels):
    task = build_task("multilabel", [f"l{i}" for i in range(labels)])
    metrics = SegmentationMetrics(labels, task=task)
    per_class = reference_scores("Multilabel", None, num_labels=labels)
    means = reference_scores("Multilabel", "macro", num_labels=labels)
    for prediction, target in random_batches((2, labels, 8, 6), 2, seed=labels):
        metrics.update(prediction, target)
        for m in (*per_class.values(), *means.values()):
            m.update(prediction, target)
    result = metrics.compute()
    assert torch.tensor(result["confusion"]).shape == (labels, 2, 2)
    assert_scores_equal(result, per_class, means)


def test_a_class_labelled_but_never_predicted_scores_zero_and_an_absent_class_is_left_out():
    task = build_task("multiclass", ["a", "b", "c"])
    metrics = SegmentationMetrics(3, task=task)
    metrics.update(torch.tensor([[0, 0, 0, 0]]), torch.tensor([[0, 0, 1, 255]]))  # b missed, c absent
    result = metrics.compute()
    b, c = result["per_class"][1], result["per_class"][2]
    assert (b["IoU"], b["Dice"], b["Precision"], b["Recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert all(math.isnan(c[key]) for key in SCORES)
    assert result["mIoU"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["mPrecision"] == pytest.approx((2 / 3 + 0) / 2)


def test_multilabel_accuracy_counts_every_labelled_entry():
    task = build_task("multilabel", ["a", "b"])
    metrics = SegmentationMetrics(2, task=task)
    target = torch.tensor([[[[1, 0, 255]], [[0, 1, 1]]]])  # (1, 2, 1, 3)
    prediction = torch.tensor([[[[1, 1, 0]], [[0, 1, 0]]]])
    metrics.update(prediction, target)
    assert metrics.compute()["aAcc"] == pytest.approx(3 / 5)


def test_multilabel_logits_become_labels_through_independent_sigmoids():
    task = build_task("multilabel", ["a", "b"], threshold=0.5)
    logits = torch.tensor([[[[2.0, -1.0]], [[3.0, -2.0]]]])
    assert torch.equal(task.labels(logits), torch.tensor([[[[1, 0]], [[1, 0]]]]))


def test_a_multilabel_target_value_other_than_0_1_or_ignore_is_refused():
    metrics = SegmentationMetrics(2, task=build_task("multilabel", ["a", "b"]))
    with pytest.raises(ValueError, match=r"target holds labels \[3\] outside \[0, 2\)"):
        metrics.update(torch.zeros(1, 2, 2, 2, dtype=torch.long), torch.full((1, 2, 2, 2), 3))


def test_the_table_lists_every_score():
    metrics = SegmentationMetrics(2, task=build_task("binary", ["bg", "fg"]))
    metrics.update(torch.tensor([[1, 1, 0]]), torch.tensor([[1, 0, 0]]))
    table = format_metrics_table(metrics.compute())
    assert "fg" in table and " 50.00" in table and "mDice  66.67" in table and "mRecall 100.00" in table
