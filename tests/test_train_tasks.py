"""Training end to end on tiny synthetic binary and multilabel data: the task sets the model's outputs, the loss,
the validation metrics and what the checkpoint records."""
import pytest
import torch

from segdense.config.train_job import train
from segdense.errors import ConfigError
from segdense.runtime import load_checkpoint

from train_utils import TINY, compose_config

SHORT = TINY + ["iterations=30", "val_interval=30", "checkpoint_interval=30", "lr=0.05", "dataset.num_samples=16"]


def capture(store):
    def hook(trainer, iteration):
        store["trainer"] = trainer

    return hook


def run(tmp_path, overrides):
    seen = {}
    result = train(compose_config(SHORT + overrides), run_dir=tmp_path, hooks=[capture(seen)])
    return result, seen["trainer"]


def test_a_binary_run_trains_one_logit_with_bce_and_scores_the_foreground(tmp_path):
    result, trainer = run(tmp_path, ["dataset=synthetic_binary", "task=binary", "task.threshold=0.4",
                                     "loss=bce_dice"])
    assert trainer.model.model_config["num_classes"] == 1
    assert trainer.criterion.names == ["binary_cross_entropy", "sigmoid_dice"]
    losses = trainer.loss_history
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert [c["name"] for c in result["per_class"]] == ["shape"]
    assert torch.tensor(result["confusion"]).shape == (1, 2, 2)
    assert result["mIoU"] > 0.3 and result["mDice"] == pytest.approx(result["per_class"][0]["Dice"])
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["task"] == {"name": "binary", "threshold": 0.4}


def test_a_multilabel_run_trains_independent_sigmoids_on_overlapping_labels(tmp_path):
    result, trainer = run(tmp_path, ["dataset=synthetic_multilabel", "task=multilabel", "loss=bce_dice",
                                     "iterations=40", "val_interval=40", "checkpoint_interval=40"])
    assert trainer.model.model_config["num_classes"] == 2
    losses = trainer.loss_history
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert [c["name"] for c in result["per_class"]] == ["shape", "round"]
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (2, 2, 2) and int(confusion[1].sum()) == int(confusion[0].sum())  # same labelled pixels
    assert result["per_class"][0]["IoU"] > 0.3  # calling every pixel a shape scores 0.17
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["task"]["name"] == "multilabel"


def test_multilabel_masks_with_a_multiclass_task_is_one_error_naming_the_task(tmp_path):
    with pytest.raises(ConfigError, match="synthetic_multilabel has multilabel masks but task=multiclass; add "
                                          "task=multilabel"):
        train(compose_config(TINY + ["dataset=synthetic_multilabel"]), run_dir=tmp_path)


def test_a_softmax_loss_with_task_binary_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="'cross_entropy' does not work in task binary"):
        train(compose_config(TINY + ["dataset=synthetic_binary", "task=binary", "loss=cross_entropy"]),
              run_dir=tmp_path)


def test_evaluating_a_binary_checkpoint_scores_as_its_validation_did(tmp_path):
    from segdense.data import build_dataset, build_transforms
    from segdense.evaluation import evaluate_model
    from segdense.inference.loading import load_bundle
    from segdense.runtime import whole_logits

    result, trainer = run(tmp_path / "run", ["dataset=synthetic_binary", "task=binary", "task.threshold=0.4",
                                             "iterations=6", "val_interval=6", "checkpoint_interval=6"])
    bundle = load_bundle(tmp_path / "run" / "checkpoints" / "last.pt")
    assert bundle.task.name == "binary" and bundle.task.threshold == 0.4
    dataset = build_dataset("synthetic_binary", "val", num_samples=16, image_size=64,
                            transform=build_transforms(bundle.eval_pipeline))
    evaluated = evaluate_model(bundle, dataset, whole_logits, torch.device("cpu"), output_dir=tmp_path / "eval",
                               progress=False)
    assert evaluated["confusion"] == result["confusion"]
    assert evaluated["mIoU"] == pytest.approx(result["mIoU"])
    assert (tmp_path / "eval" / "metrics.json").is_file()
