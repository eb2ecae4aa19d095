"""Losses: golden parity with the reference's first training step and hand-worked values."""
import math

import pytest
import torch

from conftest import fixture_path
from libs.core.config import DEFAULTS
from libs.core.errors import ConfigError, DataError
from libs.modeling.losses import Criterion, LossNormalizer, compute_losses, ctr_diou_loss_1d, sigmoid_focal_loss

VARIANTS = ["tiny_model", "tiny_model_star"]
LN2 = math.log(2.0)


def _golden(variant: str, name: str):
    return torch.load(fixture_path("golden", variant, name), weights_only=True)


def _golden_loss_inputs(variant: str):
    """Head outputs (drop path and dropout 0: train == eval) permuted to (B, T_l, C), golden targets."""
    evaluation = _golden(variant, "outputs_eval.pt")
    train = _golden(variant, "outputs_train.pt")
    masks = [m[:, 0] for m in evaluation["fpn_masks"]]  # (B, T_l)
    logits = [c.permute(0, 2, 1) for c in evaluation["cls_logits"]]  # (B, T_l, 1)
    offsets = [o.permute(0, 2, 1) for o in evaluation["offsets"]]  # (B, T_l, 2)
    return masks, logits, offsets, train


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_losses(variant):
    masks, logits, offsets, train = _golden_loss_inputs(variant)
    normalizer = LossNormalizer(train["loss_normalizer_before"])
    losses = compute_losses(
        masks, logits, offsets, train["gt_cls"], train["gt_offsets"], normalizer, 0.1, 1.0
    )
    assert normalizer.value == train["loss_normalizer_after"] == 181.5
    for key in ("cls_loss", "reg_loss", "final_loss"):
        assert losses[key].dtype == torch.float32 and losses[key].dim() == 0
        assert abs(losses[key].item() - train["losses"][key].item()) < 1e-6
    # 15 positives: valid points with a positive target (q2's padded positive excluded)
    valid = torch.cat(masks, dim=1)
    positive = (torch.stack(train["gt_cls"]).sum(-1) > 0) & valid
    assert positive.sum().item() == train["num_pos"] == 15
    assert positive.sum(1).tolist() == train["num_pos_per_sample"]


def test_golden_losses_auto_balanced_weight():
    masks, logits, offsets, train = _golden_loss_inputs("tiny_model")
    losses = compute_losses(
        masks, logits, offsets, train["gt_cls"], train["gt_offsets"], LossNormalizer(200), 0.1, 0.0
    )
    cls, reg = losses["cls_loss"].item(), losses["reg_loss"].item()
    assert losses["final_loss"].item() == pytest.approx(cls + reg * cls / reg, abs=1e-7)


def test_focal_loss_three_points_by_hand():
    # p = 0.5, 0.75, 0.5
    logits = torch.tensor([0.0, math.log(3.0), 0.0])
    targets = torch.tensor([1.0, 0.0, 0.5])
    # y=1: a_t .25, bce ln2, (1-p_t)^2 = .25 -> ln2/16
    # y=0, p=.75: a_t .75, bce ln4, (1-.25)^2 = .5625 -> .84375 ln2
    # y=.5: a_t .5, bce ln2, p_t .5 -> .125 ln2
    expected = [LN2 / 16, 0.84375 * LN2, 0.125 * LN2]
    per_point = sigmoid_focal_loss(logits, targets, reduction="none")
    assert per_point.tolist() == pytest.approx(expected, abs=1e-6)  # float32
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(1.03125 * LN2, abs=1e-6)
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(
        1.03125 * LN2 / 3, abs=1e-6
    )
    # gamma 0 and no alpha weighting: plain BCE
    plain = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0, reduction="none")
    assert plain.tolist() == pytest.approx([LN2, 2 * LN2, LN2], abs=1e-6)
    # alpha 0 still weights (a_t = 1 - y): positives count for nothing
    weighted = sigmoid_focal_loss(logits, targets, alpha=0.0, gamma=0.0, reduction="none")
    assert weighted.tolist() == pytest.approx([0.0, 2 * LN2, 0.5 * LN2], abs=1e-6)
    with pytest.raises(ValueError, match=r"reduction: expected one of \('none', 'mean', 'sum'\), got 'avg'"):
        sigmoid_focal_loss(logits, targets, reduction="avg")


def test_focal_loss_computes_in_float32():
    logits = torch.tensor([0.3, -1.2], dtype=torch.float64)
    targets = torch.tensor([0.95, 0.05], dtype=torch.float64)
    assert sigmoid_focal_loss(logits, targets).dtype == torch.float32


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        ([1.0, 2.0], [1.0, 2.0], 0.0),  # identical
        ([0.0, 2.0], [2.0, 0.0], 1.25),  # disjoint (touching at the point): iou 0, rho 2 / len 4
        ([1.0, 1.0], [2.0, 2.0], 0.5),  # nested, same centre: iou 2/4
        ([1.0, 3.0], [2.0, 2.0], 0.44),  # iou 3/5, centre shift 1 over enclosing 5
        ([0.0, 0.0], [0.0, 0.0], 1.0),  # degenerate: eps clamps keep it finite
    ],
)
def test_diou_loss_by_hand(pred, target, expected):
    loss = ctr_diou_loss_1d(torch.tensor([pred]), torch.tensor([target]), reduction="none")
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_diou_loss_of_other_precisions_gives_the_float32_numbers(dtype):
    """AMP hands the loss half-precision offsets: it computes in float32 all the same (the
    values below are exact in every dtype, so the inputs are the same numbers)."""
    pred = torch.tensor([[1.0, 3.0], [0.5, 0.25], [2.0, 0.0]])
    target = torch.tensor([[2.0, 2.0], [0.75, 0.5], [1.0, 1.0]], dtype=torch.float64)
    want = ctr_diou_loss_1d(pred, target.float(), reduction="none")
    got = ctr_diou_loss_1d(pred.to(dtype), target, reduction="none")
    assert got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("pred, target, expected", [
    ([0.0, 0.0], [1.0, 1.0], 1.0),  # zero-length prediction at the target's centre: iou 0, no shift
    ([0.0, 0.0], [0.0, 2.0], 1.25),  # zero-length at the target's start: shift 1 over enclosing 2
    # both near zero: the union (2e-9) stays, iou 0; the enclosing length 2e-9 is clamped to the
    # 1e-8 epsilon, so the shift term is (1e-9 / 1e-8)^2 = 0.01, not (1e-9 / 2e-9)^2 = 0.25
    ([1e-9, 0.0], [0.0, 1e-9], 1.01),
])
def test_diou_loss_of_degenerate_segments_is_finite_and_exact(pred, target, expected):
    loss = ctr_diou_loss_1d(torch.tensor([pred]), torch.tensor([target]), reduction="none")
    assert torch.isfinite(loss).all()
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_diou_loss_reductions():
    pred = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    target = torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    assert ctr_diou_loss_1d(pred, target).item() == pytest.approx(0.94, abs=1e-6)
    assert ctr_diou_loss_1d(pred, target, reduction="mean").item() == pytest.approx(0.47, abs=1e-6)
    empty = torch.zeros(0, 2)
    assert ctr_diou_loss_1d(empty, empty, reduction="mean").item() == 0.0


def test_loss_normalizer_updates_and_state():
    normalizer = LossNormalizer(200)
    assert normalizer.update(15) == 0.9 * 200 + (1 - 0.9) * 15
    assert normalizer.update(0) == 0.9 * 181.5 + (1 - 0.9) * 1  # max(num_pos, 1)
    state = normalizer.state_dict()
    restored = LossNormalizer(1.0)
    restored.load_state_dict(state)
    assert restored.value == normalizer.value and restored.momentum == 0.9
    with pytest.raises(ConfigError, match="init_loss_norm"):
        LossNormalizer(0)


def test_loss_normalizer_restores_its_momentum_and_checks_its_range():
    saved = LossNormalizer(50.0, momentum=0.5)
    saved.update(10)
    restored = LossNormalizer(200.0)  # default momentum 0.9
    restored.load_state_dict(saved.state_dict())
    assert (restored.value, restored.momentum) == (30.0, 0.5)
    assert restored.update(20) == 25.0  # the restored momentum is the one used
    older = LossNormalizer(200.0, momentum=0.8)
    older.load_state_dict({"value": 7.0})  # a state from before momentum was saved keeps its own
    assert (older.value, older.momentum) == (7.0, 0.8)
    for momentum in (0.0, 1.0):
        assert LossNormalizer(1.0, momentum=momentum).momentum == momentum
    for momentum in (-0.1, 1.1):
        with pytest.raises(ConfigError, match=f"momentum: expected a value in \\[0, 1\\], got {momentum}"):
            LossNormalizer(1.0, momentum=momentum)


def test_compute_losses_by_hand_smoothing_mask_and_no_positives():
    # one level, 3 points, the last padded; zero logits, no positives
    masks = [torch.tensor([[True, True, False]])]
    logits = [torch.zeros(1, 3, 1, requires_grad=True)]
    offsets = [torch.ones(1, 3, 2, requires_grad=True)]
    gt_cls = [torch.zeros(3, 1, dtype=torch.float64)]
    gt_offsets = [torch.zeros(3, 2, dtype=torch.float64)]
    normalizer = LossNormalizer(1.0)
    losses = compute_losses(masks, logits, offsets, gt_cls, gt_offsets, normalizer, 0.1, 1.0)
    assert normalizer.value == pytest.approx(1.0)
    # smoothed target 0.05: a_t = .25*.05 + .75*.95 = .725; bce ln2; (1 - p_t)^2 = .25; 2 valid points
    assert losses["cls_loss"].item() == pytest.approx(2 * 0.725 * 0.25 * LN2, abs=1e-7)
    assert losses["reg_loss"].item() == 0.0
    losses["final_loss"].backward()  # 0 * sum(pred) keeps the graph connected
    assert offsets[0].grad is not None and not offsets[0].grad.any()


def test_compute_losses_positive_point_regression_by_hand():
    masks = [torch.tensor([[True, True]])]
    logits = [torch.zeros(1, 2, 1)]
    offsets = [torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])]
    gt_cls = [torch.tensor([[1.0], [0.0]], dtype=torch.float64)]
    gt_offsets = [torch.tensor([[2.0, 2.0], [-1.0, 7.0]], dtype=torch.float64)]
    normalizer = LossNormalizer(1.0, momentum=0.5)
    losses = compute_losses(masks, logits, offsets, gt_cls, gt_offsets, normalizer, 0.0, 2.0)
    assert normalizer.value == 1.0  # 0.5 * 1 + 0.5 * 1
    assert losses["reg_loss"].item() == pytest.approx(0.44, abs=1e-6)  # only the positive point
    # no smoothing: y=1 -> ln2/16, y=0 -> .75 * .25 * ln2
    assert losses["cls_loss"].item() == pytest.approx(LN2 / 16 + 0.1875 * LN2, abs=1e-7)
    expected_final = losses["cls_loss"].item() + 2.0 * 0.44
    assert losses["final_loss"].item() == pytest.approx(expected_final, abs=1e-6)


def test_criterion_assigns_reduces_the_count_and_keeps_its_state():
    """The criterion is assignment + losses + normaliser: the losses equal compute_losses', the
    positive count goes through ``reduce_count`` first, and its state is the normaliser's."""
    train_cfg = {**DEFAULTS["train_cfg"], "init_loss_norm": 100.0, "label_smoothing": 0.1, "loss_weight": 2.0,
                 "center_sample": "none"}
    criterion = Criterion(train_cfg, num_classes=1)
    points = [torch.tensor([[float(t), 0.0, 100.0, 1.0] for t in range(6)])]
    segments, labels = [torch.tensor([[1.0, 4.0]], dtype=torch.float64)], [torch.tensor([[1]])]
    gt_cls, gt_offsets = criterion.assign(points, segments, labels, ["q0"])
    assert gt_cls[0][:, 0].tolist() == [0, 0, 1, 1, 0, 0]  # strictly inside (1, 4), mode "none"
    masks, logits, offsets = [torch.ones(1, 6, dtype=torch.bool)], [torch.zeros(1, 6, 1)], [torch.ones(1, 6, 2)]
    seen = []
    criterion.reduce_count = lambda count: seen.append(count) or count / 2
    losses = criterion(masks, logits, offsets, gt_cls, gt_offsets)
    want = compute_losses(masks, logits, offsets, gt_cls, gt_offsets, LossNormalizer(100.0), 0.1, 2.0,
                          reduce_count=lambda count: count / 2)
    assert seen == [2] and criterion.normalizer.value == 0.9 * 100.0 + 0.1 * 1.0  # max(2 / 2, 1)
    assert all(torch.equal(losses[key], want[key]) for key in want)
    restored = Criterion(train_cfg, num_classes=1)
    restored.load_state_dict(criterion.state_dict())
    assert restored.state_dict() == criterion.state_dict() == {"value": 90.1, "momentum": 0.9}
    with pytest.raises(DataError, match=r"^query 'q7': one_hot_labels has 2 classes, model num_classes is 1$"):
        criterion.assign(points, segments, [torch.tensor([[1, 0]])], ["q7"])


def test_criterion_uses_its_config_over_several_levels():
    train_cfg = {**DEFAULTS["train_cfg"], "center_sample": "radius", "center_sample_radius": 1.0}
    points = [torch.tensor([[float(t), 0.0, 100.0, 1.0] for t in range(8)]),
              torch.tensor([[float(t), 100.0, 200.0, 2.0] for t in range(0, 8, 2)])]  # two levels
    segments, labels = [torch.tensor([[1.0, 6.0]], dtype=torch.float64)], [torch.tensor([[1]])]
    narrow, _ = Criterion(train_cfg, 1).assign(points, segments, labels, ["q"])
    wide, _ = Criterion({**train_cfg, "center_sample_radius": 2.5}, 1).assign(points, segments, labels, ["q"])
    assert narrow[0].shape == (12, 1)
    assert narrow[0][:, 0].nonzero().flatten().tolist() == [3, 4]  # centre 3.5 +- 1, strict
    assert wide[0][:, 0].nonzero().flatten().tolist() == [2, 3, 4, 5]
    criterion = Criterion(train_cfg, 1, momentum=0.5)
    assert criterion.normalizer.momentum == 0.5
    masks, logits, offsets = [torch.ones(1, 8, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)], \
        [torch.zeros(1, 8, 1), torch.zeros(1, 4, 1)], [torch.ones(1, 8, 2), torch.ones(1, 4, 2)]
    gt_cls, gt_offsets = criterion.assign(points, segments, labels, ["q"])
    criterion(masks, logits, offsets, gt_cls, gt_offsets)  # the default reduce_count: the count itself
    assert criterion.normalizer.value == 0.5 * DEFAULTS["train_cfg"]["init_loss_norm"] + 0.5 * 2
    with pytest.raises(DataError, match="one_hot_labels has 2 classes"):
        criterion.assign(points, segments, [torch.tensor([1, 1])], ["q"])  # (N,) instead of (N, C)
