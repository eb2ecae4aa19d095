"""Label assignment: golden parity with the reference (bit for bit) and hand-worked cases."""
import re

import pytest
import torch

from conftest import fixture_path
from libs.core.errors import ConfigError, DataError
from libs.modeling.targets import LENGTH_TIE_TOLERANCE, assign_labels

VARIANTS = ["tiny_model", "tiny_model_star"]


def _golden(variant: str, name: str):
    return torch.load(fixture_path("golden", variant, name), weights_only=True)


def _level_points(length: int, lo: float, hi: float, stride: float) -> torch.Tensor:
    """One level's point table (T, 4) float32: rows (t, lo, hi, s)."""
    t = torch.arange(length, dtype=torch.float32) * stride
    table = torch.tensor([lo, hi, stride], dtype=torch.float32).expand(length, 3)
    return torch.cat([t[:, None], table], dim=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_batch_targets_bitwise(variant):
    inputs = _golden(variant, "inputs.pt")
    train = _golden(variant, "outputs_train.pt")
    points = torch.cat(_golden(variant, "outputs_eval.pt")["points"])  # (480, 4)
    gt_cls, gt_offsets = assign_labels(
        points, [x["segments"] for x in inputs], [x["one_hot_labels"] for x in inputs]
    )
    assert [c.sum().item() for c in gt_cls] == train["num_positive_targets_incl_padding_per_sample"]
    for ours, ref in zip(gt_cls + gt_offsets, train["gt_cls"] + train["gt_offsets"]):
        assert ours.dtype == torch.float64
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("variant", VARIANTS)
def test_golden_multi_window_targets_bitwise(variant):
    case = _golden(variant, "outputs_train.pt")["label_points_multi_gt"]
    points = torch.cat(_golden(variant, "outputs_eval.pt")["points"])
    gt_cls, gt_offsets = assign_labels(points, [case["segments"]], [case["one_hot_labels"]])
    assert torch.equal(gt_cls[0], case["gt_cls"])
    assert torch.equal(gt_offsets[0], case["gt_offsets"])


def test_inclusive_range_strict_centre_and_signed_offsets_elsewhere():
    # stride 1, range [0, 2]; window [0, 4]: centre region [0.5, 3.5] holds t = 1, 2, 3,
    # but only t = 2 reaches at most 2 (= the range's upper bound, inclusive)
    points = _level_points(6, 0.0, 2.0, 1.0)
    segments = torch.tensor([[0.0, 4.0]], dtype=torch.float64)
    labels = torch.tensor([[1]])
    gt_cls, gt_offsets = assign_labels(points, [segments], [labels])
    assert gt_cls[0][:, 0].tolist() == [0, 0, 1, 0, 0, 0]
    assert gt_offsets[0][2].tolist() == [2.0, 2.0]
    # not zero at other points: signed distances over the stride
    assert gt_offsets[0][5].tolist() == [5.0, -1.0]
    assert gt_offsets[0][0].tolist() == [0.0, 4.0]


def test_centre_region_is_strict_and_mode_none_uses_the_whole_window():
    points = _level_points(8, 0.0, 100.0, 1.0)
    segments = torch.tensor([[2.0, 6.0]], dtype=torch.float64)
    labels = torch.tensor([[1]])
    # radius 1: region [3, 5], strict -> only t = 4
    radius_cls, _ = assign_labels(points, [segments], [labels], "radius", 1.0)
    assert radius_cls[0][:, 0].nonzero().flatten().tolist() == [4]
    # none: strictly inside [2, 6] -> t = 3, 4, 5
    none_cls, _ = assign_labels(points, [segments], [labels], "none")
    assert none_cls[0][:, 0].nonzero().flatten().tolist() == [3, 4, 5]


def test_shortest_window_wins_and_near_ties_share_labels():
    points = _level_points(12, 0.0, 100.0, 1.0)
    # lengths 2, 2.0005 (within 1e-3: both label), 2.01 (beyond: does not); classes 0, 1, 2
    segments = torch.tensor([[4.0, 6.0], [4.0, 6.0005], [4.0, 6.01]], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.int64)
    gt_cls, gt_offsets = assign_labels(points, [segments], [labels], "none")
    assert gt_cls[0][5].tolist() == [1.0, 1.0, 0.0]
    assert gt_offsets[0][5].tolist() == [1.0, 1.0]  # regresses the shortest window
    # two identical windows of the same class: the label is clamped to 1
    twins = segments[:1].repeat(2, 1)
    twin_cls, _ = assign_labels(points, [twins], [torch.ones(2, 1, dtype=torch.int64)])
    assert twin_cls[0].max().item() == 1.0


def test_shortest_window_wins_wherever_it_lies_in_the_list_and_in_time():
    """The point t = 5 lies inside three windows; the shortest is neither the first listed nor
    the earliest to start, so only the length rule (not start, end or list order) picks it."""
    points = _level_points(12, 0.0, 100.0, 1.0)
    segments = torch.tensor([[0.0, 10.0], [4.0, 7.0], [3.0, 9.0]], dtype=torch.float64)
    labels = torch.eye(3, dtype=torch.int64)
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1]):
        gt_cls, gt_offsets = assign_labels(points, [segments[order]], [labels[order]], "none")
        assert gt_cls[0][5].tolist() == labels[1].tolist()  # the class of [4, 7]
        assert gt_offsets[0][5].tolist() == [1.0, 2.0]  # distances to [4, 7]


def test_a_window_exactly_at_the_tie_tolerance_still_shares_its_label():
    """The reference's rule is ``length <= shortest + 1e-3`` (inclusive)."""
    points = _level_points(12, 0.0, 100.0, 1.0)
    segments = torch.tensor([[0.0, 2.0], [0.0, 2.0 + LENGTH_TIE_TOLERANCE]], dtype=torch.float64)
    gt_cls, _ = assign_labels(points, [segments], [torch.eye(2, dtype=torch.int64)], "none")
    assert gt_cls[0][1].tolist() == [1.0, 1.0]


def test_range_lower_bound_is_inclusive():
    # stride 1, range [2, 8]; window [0, 4]: t = 2 reaches exactly 2 (kept), t = 1 and 3 reach 3
    points = _level_points(6, 2.0, 8.0, 1.0)
    segments = torch.tensor([[0.0, 4.0]], dtype=torch.float64)
    gt_cls, _ = assign_labels(points, [segments], [torch.tensor([[1]])], "none")
    assert gt_cls[0][:, 0].tolist() == [0, 1, 1, 1, 0, 0]
    points = _level_points(6, 2.5, 8.0, 1.0)  # now t = 2 (reach 2) is below the range
    gt_cls, _ = assign_labels(points, [segments], [torch.tensor([[1]])], "none")
    assert gt_cls[0][:, 0].tolist() == [0, 1, 0, 1, 0, 0]


def test_default_centre_radius_is_the_references_1_5():
    points = _level_points(20, 0.0, 100.0, 1.0)
    segments = torch.tensor([[2.0, 16.0]], dtype=torch.float64)  # centre 9: radius 1.5 -> 8, 9, 10
    labels = [torch.tensor([[1]])]
    default, _ = assign_labels(points, [segments], labels)
    assert default[0][:, 0].nonzero().flatten().tolist() == [8, 9, 10]
    assert torch.equal(default[0], assign_labels(points, [segments], labels, "radius", 1.5)[0][0])


def test_offsets_are_in_stride_units():
    points = _level_points(4, 0.0, 100.0, 4.0)  # t = 0, 4, 8, 12
    segments = torch.tensor([[2.0, 14.0]], dtype=torch.float64)
    gt_cls, gt_offsets = assign_labels(points, [segments], [torch.tensor([[1]])])
    assert gt_cls[0][:, 0].tolist() == [0, 1, 1, 1]  # region [2, 14] (centre 8 +- 6), strict
    assert gt_offsets[0][1].tolist() == [0.5, 2.5]
    assert gt_offsets[0][3].tolist() == [2.5, 0.5]


def test_no_windows_gives_zeros():
    points = _level_points(5, 0.0, 4.0, 1.0)
    gt_cls, gt_offsets = assign_labels(
        points, [torch.zeros(0, 2, dtype=torch.float64)], [torch.zeros(0, 3, dtype=torch.int64)]
    )
    assert gt_cls[0].shape == (5, 3) and gt_offsets[0].shape == (5, 2)
    assert not gt_cls[0].any() and not gt_offsets[0].any()


def test_bad_input_raises_named_errors():
    points = _level_points(5, 0.0, 4.0, 1.0)
    seg = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    lab = torch.tensor([[1]])
    with pytest.raises(ConfigError, match="center_sample"):
        assign_labels(points, [seg], [lab], center_sample="box")
    for segments, labels in ((None, None), (None, lab), (seg, None)):
        with pytest.raises(DataError, match=r"^query 0 .*no ground-truth .*test splits can only be evaluated\)$"):
            assign_labels(points, [segments], [labels])
    with pytest.raises(DataError, match=r"query 0: one_hot_labels .* with N = 1 windows, got shape \(2, 1\)"):
        assign_labels(points, [seg], [torch.tensor([[1], [1]])])
    with pytest.raises(DataError, match=r"query 0: segments must be \(N, 2\)"):
        assign_labels(points, [seg.flatten()], [lab])
    with pytest.raises(DataError, match="ground truth: 1 segment tensors but 2 label tensors"):
        assign_labels(points, [seg], [lab, lab])
    for bad in (points[:, :3], points[:, 0]):
        with pytest.raises(ValueError, match=re.escape(f"points: expected a (P, 4) table, got shape {tuple(bad.shape)}")):
            assign_labels(bad, [seg], [lab])
