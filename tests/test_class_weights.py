"""loss.class_weight: median-frequency weights, every weighted loss, and the training job's `auto`."""
import logging

import numpy as np
import pytest

from segdense.config.train_job import train
from segdense.errors import ConfigError
from segdense.data.statistics import ClassStatistics, class_statistics
from segdense.runtime import load_checkpoint
from segdense.losses import build_criterion, build_loss, median_frequency_weights

from test_losses import TARGET, logits_t, softmax_at, target_t, valid_pixels
from train_utils import TINY, compose_config


def test_median_frequency_weights_follow_the_rule():
    # freq = pixels / pixels of the images holding the class = 0.9, 0.09, 0.1; median 0.1
    weights = median_frequency_weights([90, 9, 1], [100, 100, 10])
    assert weights == pytest.approx([0.1 / 0.9, 0.1 / 0.09, 1.0], abs=1e-4)


def test_median_frequency_weights_are_clipped_and_absent_classes_weigh_one():
    # freq 0.999 and 0.000999: median 0.5 -> 0.5005 and 500.5, clipped to 10; class 2 never occurs
    assert median_frequency_weights([1000, 1, 0], [1001, 1001, 0]) == pytest.approx([0.5005, 10.0, 1.0], abs=1e-4)
    assert median_frequency_weights([1000, 1], [1001, 1001], max_weight=100.0)[1] == 100.0


def test_class_statistics_count_pixels_images_and_context():
    stats = ClassStatistics.empty(["a", "b", "c"])
    stats.add(np.array([[0, 0, 1], [255, 1, 1]]))
    stats.add(np.array([[0, 0], [0, 7]]))
    assert stats.pixels.tolist() == [5, 3, 0]
    assert stats.images.tolist() == [2, 1, 0]
    assert stats.context_pixels.tolist() == [5 + 3, 5, 0]
    assert (stats.ignored_pixels, stats.other_pixels, stats.num_images) == (1, 1, 2)
    assert stats.missing_classes() == ["c"]
    assert stats.image_frequency.tolist() == [1.0, 0.5, 0.0]


def _dice_by_hand(weights):
    probs = {p: softmax_at(*p) for p in valid_pixels()}
    dices = []
    for c in range(3):
        inter = sum(probs[p][c] for p in valid_pixels() if TARGET[p] == c)
        denom = sum(probs[p][c] for p in valid_pixels()) + sum(TARGET[p] == c for p in valid_pixels())
        dices.append((2 * inter + 1.0) / (denom + 1.0))
    return 1.0 - sum(w * d for w, d in zip(weights, dices)) / sum(weights)


def test_dice_class_weights_give_a_weighted_mean_of_class_dice():
    w = [0.5, 2.0, 1.0]
    loss = build_loss("dice", weight=w)(logits_t(), target_t())
    assert loss.item() == pytest.approx(_dice_by_hand(w), rel=1e-9)
    assert build_loss("dice")(logits_t(), target_t()).item() == pytest.approx(_dice_by_hand([1, 1, 1]), rel=1e-9)


def test_lovasz_class_weights_weigh_each_class_term():
    per_class = [build_loss("lovasz_softmax", weight=[float(k == c) for k in range(3)])(logits_t(), target_t()).item()
                 for c in range(3)]
    w = [0.5, 2.0, 1.0]
    loss = build_loss("lovasz_softmax", weight=w)(logits_t(), target_t()).item()
    assert loss == pytest.approx(sum(a * b for a, b in zip(w, per_class)) / sum(w), rel=1e-9)


@pytest.mark.parametrize("name, arg", [("cross_entropy", "weight"), ("ohem_cross_entropy", "weight"),
                                       ("focal", "weight"), ("dice", "weight"), ("lovasz_softmax", "weight")])
def test_criterion_gives_class_weight_to_every_term(name, arg):
    criterion = build_criterion([{"name": name}], num_classes=3, class_weight=[0.5, 2.0, 1.0])
    assert getattr(criterion.losses[0], arg).tolist() == [0.5, 2.0, 1.0]


def test_weighted_cross_entropy_through_the_criterion_is_the_weighted_mean():
    w = [0.5, 2.0, 1.0]
    num = sum(w[TARGET[p]] * -np.log(softmax_at(*p)[TARGET[p]]) for p in valid_pixels())
    den = sum(w[TARGET[p]] for p in valid_pixels())
    total, _ = build_criterion([{"name": "cross_entropy"}], num_classes=3, class_weight=w)(logits_t(), target_t())
    assert total.item() == pytest.approx(num / den, rel=1e-6)


def test_focal_with_class_weight_and_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha and loss.class_weight"):
        build_criterion([{"name": "focal", "alpha": [1, 1, 1]}], num_classes=3, class_weight=[1, 2, 3])


@pytest.mark.parametrize("bad", [[1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 2.0]])
def test_bad_class_weights_are_refused(bad):
    with pytest.raises(ValueError, match="one non-negative number per class"):
        build_criterion([{"name": "cross_entropy"}], num_classes=3, class_weight=bad)


def test_config_refuses_a_class_weight_that_is_neither_auto_nor_numbers():
    from segdense.config.train_job import resolve_class_weight

    for bad in ("median", ["a", "b"]):
        with pytest.raises(ConfigError, match="loss.class_weight must be null, auto, or a list"):
            resolve_class_weight(bad, train_set=None)


def test_auto_class_weight_is_printed_used_and_stored_in_the_checkpoint(tmp_path, caplog):
    from segdense.config.train_job import build_datasets

    cfg = compose_config(TINY + ["iterations=1", "loss.class_weight=auto"])
    expected = class_statistics(build_datasets(cfg)[0]).class_weights()
    assert len(set(expected)) > 1  # the synthetic classes are imbalanced: the weights differ
    with caplog.at_level(logging.INFO, logger="segdense"):
        train(cfg, run_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert state["config"]["loss"]["class_weight"] == expected
    line = next(r.getMessage() for r in caplog.records if "segdense training" in r.getMessage())
    assert "class weights (auto: median frequency over 8 training masks)" in line
    assert "\n  weights   random (backbone.pretrained not set)\n" in line
    assert f"background {expected[0]:.3g}" in line and f"ring {expected[4]:.3g}" in line


def test_a_class_weight_list_of_the_wrong_length_names_the_classes(tmp_path):
    cfg = compose_config(TINY + ["iterations=1", "loss.class_weight=[1,2]"])
    with pytest.raises(ConfigError, match=r"2 numbers but the dataset has 5 classes \(background, circle"):
        train(cfg, run_dir=tmp_path)
