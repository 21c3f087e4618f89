"""The binary and multilabel losses against segmentation_models_pytorch's losses and torch's BCE, the references,
on the same random logits and labels (with ignored labels)."""
import pytest
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, LovaszLoss

from segdense.errors import ConfigError
from segdense.losses import build_criterion, build_loss
from segdense.tasks import build_task

IGNORE = 255


def random_case(channels, seed, ignored=0.2, shape=(2, 7, 9)):
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    logits = (3 * torch.randn(n, channels, h, w, generator=g, dtype=torch.float64)).requires_grad_()
    target = (torch.rand(n, channels, h, w, generator=g) < 0.4).long()
    target[torch.rand(n, channels, h, w, generator=g) < ignored] = IGNORE
    return logits, target


def close(ours, reference):
    assert torch.allclose(ours, reference, rtol=1e-9, atol=1e-12), (float(ours.detach()), float(reference.detach()))


@pytest.mark.parametrize("mode,channels", [("binary", 1), ("multilabel", 4)])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_sigmoid_dice_equals_smp(mode, channels, smooth):
    logits, target = random_case(channels, seed=channels)
    target[:, -1] = torch.where(target[:, -1] == 1, 0, target[:, -1])  # a class with no positive label
    reference = DiceLoss(mode, smooth=smooth, ignore_index=IGNORE)(logits, target)
    close(build_loss("sigmoid_dice", smooth=smooth)(logits, target), reference)


@pytest.mark.parametrize("alpha,gamma", [(None, 2.0), (0.25, 1.5)])
def test_binary_sigmoid_focal_equals_smp(alpha, gamma):
    logits, target = random_case(1, seed=3)
    reference = FocalLoss("binary", alpha=alpha, gamma=gamma, ignore_index=IGNORE)(logits, target)
    close(build_loss("sigmoid_focal", alpha=alpha, gamma=gamma)(logits, target[:, 0]), reference)


def test_multilabel_sigmoid_focal_equals_smp():
    logits, target = random_case(3, seed=4, ignored=0.0)
    reference = FocalLoss("multilabel", alpha=0.3, ignore_index=None)(logits, target)
    close(build_loss("sigmoid_focal", alpha=0.3)(logits, target), reference)


def test_multilabel_sigmoid_focal_with_ignored_labels_is_smps_binary_focal_per_class():
    # smp's multilabel focal cannot take per-label ignore masks; per class it is its binary focal.
    logits, target = random_case(3, seed=5)
    binary = FocalLoss("binary", ignore_index=IGNORE)
    reference = torch.stack([binary(logits[:, c], target[:, c]) for c in range(3)]).mean()
    close(build_loss("sigmoid_focal")(logits, target), reference)


@pytest.mark.parametrize("mode,channels", [("binary", 1), ("multilabel", 3)])
def test_lovasz_hinge_equals_smp(mode, channels):
    logits, target = random_case(channels, seed=6 + channels)
    logits = logits.detach().float()  # smp's Lovasz gradient is float32
    reference = LovaszLoss(mode, ignore_index=IGNORE)(logits, target)
    assert torch.allclose(build_loss("lovasz_hinge")(logits, target), reference, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pos_weight", [None, [2.5], [0.5, 1.0, 3.0]])
def test_binary_cross_entropy_equals_torch_over_the_labelled_entries(pos_weight):
    logits, target = random_case(3, seed=8)
    valid = target != IGNORE
    weight = None if pos_weight is None else torch.tensor(pos_weight, dtype=torch.float64).view(1, -1, 1, 1)
    reference = F.binary_cross_entropy_with_logits(
        logits[valid], target[valid].double(),
        pos_weight=None if weight is None else weight.expand_as(logits)[valid])
    close(build_loss("binary_cross_entropy", pos_weight=pos_weight)(logits, target), reference)


def test_sigmoid_loss_gradients_equal_smps():
    logits, target = random_case(2, seed=9)
    ours = build_loss("sigmoid_dice")(logits, target)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    (grad_ref,) = torch.autograd.grad(DiceLoss("multilabel", ignore_index=IGNORE)(logits, target), logits)
    assert torch.allclose(grad_ours, grad_ref, rtol=1e-9, atol=1e-12)


def test_every_sigmoid_loss_of_an_all_ignored_batch_is_zero_with_zero_gradient():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    target = torch.full((1, 2, 3, 3), IGNORE)
    for name in ("binary_cross_entropy", "sigmoid_dice", "sigmoid_focal", "lovasz_hinge"):
        loss = build_loss(name)(logits, target)
        (grad,) = torch.autograd.grad(loss, logits)
        assert float(loss.detach()) == 0.0 and not grad.any(), name


def test_a_binary_criterion_feeds_the_mask_as_one_label_band():
    task = build_task("binary", ["background", "road"])
    logits, target = random_case(1, seed=10)
    criterion = build_criterion([{"name": "binary_cross_entropy"}, {"name": "sigmoid_dice", "weight": 0.5}],
                                task=task)
    total, logs = criterion(logits, target[:, 0])
    expected = build_loss("binary_cross_entropy")(logits, target) + 0.5 * build_loss("sigmoid_dice")(logits, target)
    close(total, expected)
    assert set(logs) == {"binary_cross_entropy", "sigmoid_dice", "total"}


def test_the_default_term_follows_the_task():
    assert build_criterion(task=build_task("multilabel", ["a", "b"])).names == ["binary_cross_entropy"]
    assert build_criterion(task=build_task("multiclass", ["a", "b"])).names == ["cross_entropy"]


def test_a_softmax_loss_in_a_sigmoid_task_is_one_error_listing_the_fitting_losses():
    with pytest.raises(ValueError, match="'cross_entropy' does not work in task binary.*sigmoid_dice"):
        build_criterion([{"name": "cross_entropy"}], task=build_task("binary", ["bg", "fg"]))
    with pytest.raises(ValueError, match="'lovasz_hinge' does not work in task multiclass.*lovasz_softmax"):
        build_criterion([{"name": "lovasz_hinge"}])


def test_a_multilabel_target_with_the_wrong_band_count_names_both_shapes():
    criterion = build_criterion(task=build_task("multilabel", ["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"\(2, 2, 5, 5\) does not fit task multilabel.*\(2, 3, 5, 5\)"):
        criterion(torch.zeros(2, 3, 5, 5), torch.zeros(2, 2, 5, 5, dtype=torch.long))


def test_binary_targets_other_than_0_1_and_ignore_are_refused():
    criterion = build_criterion(task=build_task("binary", ["bg", "fg"]))
    with pytest.raises(ValueError, match=r"outside \[0, 2\).*\[2\]"):
        criterion(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 1], [2, 255]]]))


def test_binary_needs_two_class_names_and_a_threshold_inside_0_1():
    with pytest.raises(ConfigError, match="two class names"):
        build_task("binary", ["vessel"])
    with pytest.raises(ConfigError, match="threshold must lie in"):
        build_task("multilabel", ["a", "b"], threshold=1.0)
    with pytest.raises(ConfigError, match="valid tasks: multiclass, binary, multilabel"):
        build_task("semantic", ["a"])
