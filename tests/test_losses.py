"""Losses and the criterion, checked against values computed independently with plain loops."""
import math

import numpy as np
import pytest
import torch

from segdense.losses import build_criterion, build_loss, list_losses

LOSSES = ["cross_entropy", "ohem_cross_entropy", "bootstrapped_cross_entropy", "dice", "lovasz_softmax", "focal"]

# One image, 3 classes, 2x3 pixels; the pixel (1, 2) is ignored.
LOGITS = np.array(
    [[[[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]],
      [[0.1, 1.5, 0.3], [2.0, -0.5, 0.0]],
      [[-1.0, 0.2, 2.2], [0.5, 0.4, 1.0]]]]
)
TARGET = np.array([[[0, 1, 2], [1, 0, 255]]])


def logits_t():
    return torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)


def target_t():
    return torch.tensor(TARGET)


def softmax_at(n, i, j):
    """Class probabilities of one pixel, by hand."""
    exps = [math.exp(LOGITS[n, c, i, j]) for c in range(LOGITS.shape[1])]
    return [e / sum(exps) for e in exps]


def valid_pixels():
    n_, h, w = TARGET.shape
    return [(n, i, j) for n in range(n_) for i in range(h) for j in range(w) if TARGET[n, i, j] != 255]



def test_every_loss_is_registered():
    assert set(LOSSES) <= set(list_losses())


def test_cross_entropy_is_the_mean_over_valid_pixels():
    expected = np.mean([-math.log(softmax_at(*p)[TARGET[p]]) for p in valid_pixels()])
    assert build_loss("cross_entropy")(logits_t(), target_t()).item() == pytest.approx(expected, rel=1e-9)


def test_cross_entropy_class_weights_give_a_weighted_mean():
    w = [0.5, 2.0, 1.0]
    num = sum(w[TARGET[p]] * -math.log(softmax_at(*p)[TARGET[p]]) for p in valid_pixels())
    den = sum(w[TARGET[p]] for p in valid_pixels())
    loss = build_loss("cross_entropy", weight=w)(logits_t(), target_t())
    assert loss.item() == pytest.approx(num / den, rel=1e-6)


def test_cross_entropy_label_smoothing():
    eps, c = 0.1, 3
    per_pixel = []
    for p in valid_pixels():
        logp = [math.log(q) for q in softmax_at(*p)]
        per_pixel.append(-(1 - eps) * logp[TARGET[p]] - eps / c * sum(logp))
    loss = build_loss("cross_entropy", label_smoothing=eps)(logits_t(), target_t())
    assert loss.item() == pytest.approx(np.mean(per_pixel), rel=1e-9)


def test_ohem_keeps_pixels_whose_true_class_probability_is_below_thresh():
    thresh = 0.7
    hard = [p for p in valid_pixels() if softmax_at(*p)[TARGET[p]] < thresh]
    assert 0 < len(hard) < len(valid_pixels())  # the example really selects
    expected = np.mean([-math.log(softmax_at(*p)[TARGET[p]]) for p in hard])
    loss = build_loss("ohem_cross_entropy", thresh=thresh, min_kept=0)(logits_t(), target_t())
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ohem_min_kept_raises_the_threshold_to_keep_the_hardest_pixels():
    # thresh so low that no pixel passes it: min_kept=2 keeps the two lowest-probability pixels
    probs = sorted((softmax_at(*p)[TARGET[p]], p) for p in valid_pixels())
    expected = np.mean([-math.log(q) for q, _ in probs[:2]])
    loss = build_loss("ohem_cross_entropy", thresh=0.01, min_kept=2)(logits_t(), target_t())
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def pixel_losses():
    return sorted((-math.log(softmax_at(*p)[TARGET[p]]) for p in valid_pixels()), reverse=True)


def test_bootstrapped_keeps_every_loss_above_loss_th_when_more_than_min_k_exceed_it():
    losses = pixel_losses()
    loss_th = (losses[2] + losses[3]) / 2  # three pixels above it, min_K=2: the third exceeds loss_th
    loss = build_loss("bootstrapped_cross_entropy", min_K=2, loss_th=loss_th)(logits_t(), target_t())
    assert loss.item() == pytest.approx(np.mean(losses[:3]), rel=1e-9)


def test_bootstrapped_keeps_the_min_k_largest_losses_when_fewer_exceed_loss_th():
    losses = pixel_losses()
    loss = build_loss("bootstrapped_cross_entropy", min_K=2, loss_th=losses[0] + 1)(logits_t(), target_t())
    assert loss.item() == pytest.approx(np.mean(losses[:2]), rel=1e-9)


def test_bootstrapped_selects_per_image_and_averages_the_images():
    logits = torch.cat([logits_t(), 3 * logits_t()]).detach()
    target = torch.cat([target_t(), target_t()])
    criterion = build_loss("bootstrapped_cross_entropy", min_K=2, loss_th=0.5)
    per_image = [criterion(logits[i:i + 1], target[i:i + 1]).item() for i in range(2)]
    assert per_image[0] != pytest.approx(per_image[1])
    assert criterion(logits, target).item() == pytest.approx(np.mean(per_image), rel=1e-12)


def test_ohem_with_class_weights_is_the_weighted_mean_over_the_kept_pixels():
    weight, thresh = [0.5, 2.0, 1.0], 0.7
    kept = [(p, softmax_at(*p)[TARGET[p]]) for p in valid_pixels() if softmax_at(*p)[TARGET[p]] < thresh]
    assert 0 < len(kept) < len(valid_pixels())  # the threshold really selects
    expected = (sum(weight[TARGET[p]] * -math.log(prob) for p, prob in kept)
                / sum(weight[TARGET[p]] for p, _ in kept))
    loss = build_loss("ohem_cross_entropy", thresh=thresh, min_kept=0, weight=weight)(logits_t(), target_t())
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_focal_loss_matches_its_formula():
    gamma, alpha = 2.0, [0.25, 0.5, 1.0]
    terms = []
    for p in valid_pixels():
        pt = softmax_at(*p)[TARGET[p]]
        terms.append(-alpha[TARGET[p]] * (1 - pt) ** gamma * math.log(pt))
    loss = build_loss("focal", gamma=gamma, alpha=alpha)(logits_t(), target_t())
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-6)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    ce = build_loss("cross_entropy")(logits_t(), target_t())
    assert build_loss("focal", gamma=0.0)(logits_t(), target_t()).item() == pytest.approx(ce.item(), rel=1e-9)


def test_dice_loss_matches_hand_computation():
    smooth = 1.0
    dices = []
    for c in range(3):
        inter = sum(softmax_at(*p)[c] * (TARGET[p] == c) for p in valid_pixels())
        psum = sum(softmax_at(*p)[c] for p in valid_pixels())
        tsum = sum(TARGET[p] == c for p in valid_pixels())
        dices.append((2 * inter + smooth) / (psum + tsum + smooth))
    loss = build_loss("dice", smooth=smooth)(logits_t(), target_t())
    assert loss.item() == pytest.approx(1 - np.mean(dices), rel=1e-9)


def lovasz_reference(probs, labels, c):
    """Lovasz extension of 1 - IoU_c, from its definition: sort errors descending; the weight of the
    i-th error is J(first i pixels wrong) - J(first i-1 pixels wrong), with J the Jaccard loss."""
    fg = [1.0 if y == c else 0.0 for y in labels]
    errors = [abs(f - p[c]) for f, p in zip(fg, probs)]
    order = sorted(range(len(errors)), key=lambda k: -errors[k])

    def jaccard_loss(wrong):
        inter = sum(fg[k] for k in range(len(fg)) if k not in wrong)
        union = sum(fg) + sum(1 - fg[k] for k in wrong)
        return 1 - inter / union if union else 0.0

    total, prev = 0.0, 0.0
    for i in range(1, len(order) + 1):
        cur = jaccard_loss(set(order[:i]))
        total += errors[order[i - 1]] * (cur - prev)
        prev = cur
    return total


def test_lovasz_softmax_matches_its_definition_over_present_classes():
    probs = [softmax_at(*p) for p in valid_pixels()]
    labels = [TARGET[p] for p in valid_pixels()]
    expected = np.mean([lovasz_reference(probs, labels, c) for c in sorted(set(labels))])
    loss = build_loss("lovasz_softmax")(logits_t(), target_t())
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_lovasz_softmax_over_all_classes_counts_the_absent_ones():
    target = np.array([[[0, 1, 1], [1, 0, 255]]])  # class 2 absent
    probs = [softmax_at(*p) for p in valid_pixels()]
    labels = [target[p] for p in valid_pixels()]
    expected_all = np.mean([lovasz_reference(probs, labels, c) for c in range(3)])
    expected_present = np.mean([lovasz_reference(probs, labels, c) for c in (0, 1)])
    assert abs(expected_all - expected_present) > 1e-3
    target_t2 = torch.tensor(target)
    all_classes = build_loss("lovasz_softmax", classes="all")(logits_t(), target_t2).item()
    assert all_classes == pytest.approx(expected_all, rel=1e-9)
    assert build_loss("lovasz_softmax")(logits_t(), target_t2).item() == pytest.approx(expected_present, rel=1e-9)


def test_lovasz_softmax_of_a_confident_prediction_is_one_minus_iou():
    # Near one-hot predictions: the extension equals the discrete loss 1 - IoU per class.
    target = torch.tensor([[[0, 0, 1], [1, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
    logits = 50.0 * torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).double()
    iou0 = 1 / 3  # pred 0 at {(0,0),(1,1)}, target 0 at {(0,0),(0,1)}: inter 1, union 3
    iou1 = 2 / 4  # pred 1 at {(0,1),(0,2),(1,0)}, target 1 at {(0,2),(1,0),(1,1)}: inter 2, union 4
    loss = build_loss("lovasz_softmax")(logits, target)
    assert loss.item() == pytest.approx(1 - (iou0 + iou1) / 2, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_batch_gives_zero_loss_and_finite_gradient(name):
    logits = torch.randn(2, 4, 5, 6, requires_grad=True)
    target = torch.full((2, 5, 6), 255)
    loss = build_loss(name)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixels_do_not_change_the_loss(name):
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, 0] = 255
    changed = logits.clone()
    changed[0, :, 0] = torch.randn(3, 4) * 10  # only the ignored row differs
    loss = build_loss(name, min_kept=1) if name == "ohem_cross_entropy" else build_loss(name)
    assert loss(changed, target).item() == pytest.approx(loss(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_target_values_out_of_range_are_named(name):
    target = torch.tensor([[[0, 1, 2], [7, -1, 255]]])
    with pytest.raises(ValueError, match=r"outside \[0, 3\) other than ignore_index=255: \[-1, 7\]"):
        build_loss(name)(torch.zeros(1, 3, 2, 3), target)


def test_float_targets_are_refused():
    with pytest.raises(TypeError, match="integer class indices"):
        build_loss("cross_entropy")(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))


def test_target_shape_must_match_logits():
    with pytest.raises(ValueError, match=r"does not match logits .* expected \(N, H, W\) = \(1, 2, 2\)"):
        build_loss("dice")(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 4, dtype=torch.long))


def test_unknown_loss_name_lists_the_losses():
    with pytest.raises(ValueError, match="unknown loss 'dise'. Did you mean 'dice'.*cross_entropy"):
        build_loss("dise")


def test_class_weight_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"one non-negative number per class \(3\)"):
        build_loss("cross_entropy", num_classes=3, weight=[1.0, 2.0])


def test_logits_with_another_class_count_than_configured_are_refused():
    with pytest.raises(ValueError, match="logits have 4 channels but the loss was built for num_classes=3"):
        build_criterion(num_classes=3)(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_criterion_is_the_weighted_sum_of_its_terms():
    criterion = build_criterion([{"name": "cross_entropy", "weight": 1.0}, {"name": "dice", "weight": 0.5}])
    total, logs = criterion(logits_t(), target_t())
    ce = build_loss("cross_entropy")(logits_t(), target_t()).item()
    dice = build_loss("dice")(logits_t(), target_t()).item()
    assert total.item() == pytest.approx(ce + 0.5 * dice, rel=1e-9)
    assert set(logs) == {"cross_entropy", "dice", "total"}
    assert logs["cross_entropy"].item() == pytest.approx(ce) and logs["dice"].item() == pytest.approx(dice)
    assert not logs["total"].requires_grad


def test_criterion_adds_the_aux_output_with_its_own_weight():
    criterion = build_criterion([{"name": "cross_entropy"}], aux_weight=0.4)
    aux = torch.tensor(LOGITS[:, ::-1].copy(), requires_grad=True)
    total, logs = criterion({"out": logits_t(), "aux": aux}, target_t())
    ce_out = build_loss("cross_entropy")(logits_t(), target_t()).item()
    ce_aux = build_loss("cross_entropy")(aux, target_t()).item()
    assert total.item() == pytest.approx(ce_out + 0.4 * ce_aux, rel=1e-9)
    assert logs["aux"].item() == pytest.approx(ce_aux)
    total.backward()
    assert aux.grad.abs().sum() > 0


def test_criterion_passes_term_arguments_to_the_loss():
    criterion = build_criterion([{"name": "focal", "weight": 2.0, "gamma": 0.0}])
    ce = build_loss("cross_entropy")(logits_t(), target_t()).item()
    assert criterion(logits_t(), target_t())[0].item() == pytest.approx(2 * ce, rel=1e-9)


def test_criterion_with_a_repeated_loss_logs_both():
    criterion = build_criterion([{"name": "cross_entropy"}, {"name": "cross_entropy", "label_smoothing": 0.1}])
    assert set(criterion(logits_t(), target_t())[1]) == {"cross_entropy", "cross_entropy_2", "total"}


def test_criterion_rejects_an_unknown_loss_and_an_empty_term_list():
    with pytest.raises(ValueError, match="unknown loss 'ce'"):
        build_criterion([{"name": "ce", "weight": 1.0}])
    with pytest.raises(ValueError, match="at least one loss term"):
        build_criterion([])
