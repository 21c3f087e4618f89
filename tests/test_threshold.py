"""Choosing a binary threshold on validation: the histogram search picks the threshold with the highest IoU and
reports the scores the task's labels give at it; training stores it and evaluation uses it."""
import pytest
import torch

from segdense.errors import ConfigError
from segdense.metrics import SegmentationMetrics, ThresholdSearch
from segdense.tasks import build_task


def binary(threshold=0.5):
    return build_task("binary", ["background", "road"], threshold=threshold)


def logits_of(probabilities):
    p = torch.tensor(probabilities, dtype=torch.float32)
    return torch.log(p / (1 - p)).view(1, 1, 1, -1)


def iou_at(threshold, logits, target):
    metrics = SegmentationMetrics(2, task=binary(threshold))
    metrics.update(logits, target)
    return metrics.compute()["mIoU"]


def test_the_chosen_threshold_maximises_iou_on_a_constructed_case():
    # foreground at 0.35..0.45 and 0.8, background at 0.1, 0.3 and 0.6: the best cut lies just below 0.35
    # (IoU 4/5 with the 0.6 background above it), better than 0.5 (IoU 1/5) and than cutting below 0.3 (4/6)
    logits = logits_of([0.1, 0.3, 0.35, 0.4, 0.45, 0.6, 0.8])
    target = torch.tensor([[[0, 0, 1, 1, 1, 0, 1]]])
    search = ThresholdSearch(binary("auto"))
    search.update(logits, target)
    result = search.compute()
    assert 0.3 <= result["threshold"] < 0.35
    assert result["mIoU"] == pytest.approx(4 / 5)
    assert result["mIoU"] == pytest.approx(iou_at(result["threshold"], logits, target))
    assert iou_at(0.5, logits, target) == pytest.approx(1 / 5)


def test_the_search_equals_the_best_of_every_grid_threshold_on_random_data():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 16, 16, generator=generator) * 2
    target = ((logits[:, 0] + torch.randn(2, 16, 16, generator=generator) * 1.5) > 0.7).long()
    target[0, :2] = 255
    search = ThresholdSearch(binary("auto"))
    search.update(logits[:1], target[:1])
    search.update(logits[1:], target[1:])
    result = search.compute()
    grid = [iou_at(k / 1000, logits, target) for k in range(1, 1000, 7)]
    assert result["mIoU"] >= max(grid) - 1e-12
    metrics = SegmentationMetrics(2, task=binary(result["threshold"]))
    metrics.update(logits, target)
    assert result["confusion"] == metrics.compute()["confusion"]  # exactly the labels' counts at the threshold


def test_auto_is_for_binary_tasks_only():
    with pytest.raises(ConfigError, match="threshold=auto .* is for task=binary; task multilabel takes a number"):
        build_task("multilabel", ["a", "b"], threshold="auto")
    with pytest.raises(ConfigError, match="task.threshold must lie in \\(0, 1\\) or be auto, got 'half'"):
        build_task("binary", ["a", "b"], threshold="half")


def test_training_with_an_automatic_threshold_stores_it_and_evaluation_uses_it(tmp_path):
    from segdense.config.train_job import train
    from segdense.data import build_dataset, build_transforms
    from segdense.evaluation import evaluate_model
    from segdense.inference.loading import load_bundle
    from segdense.runtime import load_checkpoint, whole_logits

    from train_utils import TINY, compose_config

    result = train(compose_config(TINY + ["dataset=synthetic_binary", "task=binary", "task.threshold=auto",
                                          "iterations=6", "val_interval=6", "checkpoint_interval=6",
                                          "dataset.num_samples=8"]), run_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    chosen = state["task"]["threshold"]
    assert state["task"]["name"] == "binary" and state["history"][-1]["threshold"] == chosen
    assert chosen == pytest.approx(round(chosen, 3)) and 0 < chosen < 1
    bundle = load_bundle(tmp_path / "run" / "checkpoints" / "last.pt")
    assert bundle.task.threshold == chosen
    dataset = build_dataset("synthetic_binary", "val", num_samples=8, image_size=64,
                            transform=build_transforms(bundle.eval_pipeline))
    evaluated = evaluate_model(bundle, dataset, whole_logits, torch.device("cpu"), progress=False)
    assert evaluated["confusion"] == result["confusion"]
