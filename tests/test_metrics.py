"""The confusion matrix behind every mIoU (SegmentationMetrics, per-image scores) against torchmetrics'
MulticlassConfusionMatrix, the reference implementation, on the same predictions and labels."""
import math

import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from segdense.inference.per_image import image_scores
from segdense.metrics import SegmentationMetrics, confusion_matrix


def reference(prediction, target, num_classes, ignore_index=255):
    metric = MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index)
    metric.update(prediction.reshape(-1), target.reshape(-1))
    return metric.compute()


def labelled(shape, num_classes, ignored, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignored] = 255
    logits = torch.randn(shape[0], num_classes, *shape[1:], generator=g)
    return logits, target


@pytest.mark.parametrize("num_classes,ignored,dtype", [(2, 0.0, torch.int64), (5, 0.3, torch.uint8),
                                                        (21, 0.1, torch.int64), (150, 0.5, torch.int64)])
def test_the_confusion_matrix_equals_torchmetrics(num_classes, ignored, dtype):
    logits, target = labelled((3, 17, 23), num_classes, ignored, seed=num_classes)
    prediction = logits.argmax(1)
    expected = reference(prediction, target, num_classes)
    got = confusion_matrix(prediction, target.to(dtype), num_classes)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    assert int(got.sum()) == int((target != 255).sum())


def test_accumulated_batches_equal_torchmetrics_and_reset_starts_over():
    metrics = SegmentationMetrics(6)
    reference_metric = MulticlassConfusionMatrix(6, ignore_index=255)
    for seed in range(4):
        logits, target = labelled((2, 9, 11), 6, 0.2, seed)
        metrics.update(logits if seed % 2 else logits.argmax(1), target)  # logits or class indices
        reference_metric.update(logits.argmax(1).reshape(-1), target.reshape(-1))
    result = metrics.compute()
    assert torch.equal(torch.tensor(result["confusion"]), reference_metric.compute())
    cm = reference_metric.compute().double()
    tp, union = cm.diag(), cm.sum(0) + cm.sum(1) - cm.diag()
    assert math.isclose(result["mIoU"], float((tp / union).mean()), rel_tol=1e-12)
    metrics.reset()
    logits, target = labelled((1, 5, 5), 6, 0.0, 9)
    metrics.update(logits, target)
    assert torch.equal(torch.tensor(metrics.compute()["confusion"]), reference(logits.argmax(1), target, 6))


def test_per_image_scores_use_the_same_matrix():
    logits, target = labelled((1, 13, 7), 4, 0.25, 3)
    prediction = logits.argmax(1)[0]
    pixels, accuracy, iou = image_scores(prediction, target[0], 4)
    cm = reference(prediction, target[0], 4).double()
    assert pixels == int((target != 255).sum())
    assert math.isclose(accuracy, float(cm.diag().sum() / cm.sum()))
    union = cm.sum(0) + cm.sum(1) - cm.diag()
    assert iou == pytest.approx((cm.diag() / union).tolist())


def test_out_of_range_class_indices_are_one_clear_error():
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"prediction holds class indices outside \[0, 3\): 0\.\.3"):
        metrics.update(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"target holds labels \[7\] outside \[0, 3\) and not 255"):
        metrics.update(torch.tensor([[0, 2]]), torch.tensor([[7, 255]]))
