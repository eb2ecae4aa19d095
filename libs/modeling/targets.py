"""Label assignment: which pyramid points are positives for a query's windows, and what they regress.

Spec section 6. A point ``(t, lo, hi, s)`` is a positive for a ground-truth window ``[g0, g1]`` when
it lies strictly inside the window's centre region (``radius * s`` around the centre, clipped to the
window) and its larger boundary distance falls inside the level's regression range ``[lo, hi]``
(inclusive). Among the windows a point qualifies for, the shortest wins; windows within ``1e-3`` of
that length also contribute their labels (the reference's tie rule).

Arithmetic follows the reference exactly: windows are float64 and the float32 points promote, so
targets are float64 and bit-identical to the reference's. The regression target of a point that is
not a positive is *not* zero: it is the signed distance to the first-ranked window divided by the
stride (the losses only read positives, but the values are kept for parity).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from libs.core.errors import ConfigError, DataError

CENTER_SAMPLE_MODES = ("radius", "none")

# Windows whose lengths differ from the shortest by at most this much (grid units) all label a point.
LENGTH_TIE_TOLERANCE = 1e-3


def assign_labels(
    points: Tensor,
    gt_segments: Sequence[Optional[Tensor]],
    gt_labels: Sequence[Optional[Tensor]],
    center_sample: str = "radius",
    center_sample_radius: float = 1.5,
) -> Tuple[List[Tensor], List[Tensor]]:
    """Classification and regression targets for every point of every query in the batch.

    Args:
        points: ``(P, 4)`` float32, all levels concatenated; rows ``(t, lo_l, hi_l, s_l)``.
        gt_segments: per query, ``(N_i, 2)`` windows in grid units (float64 in the reference).
        gt_labels: per query, ``(N_i, num_classes)`` one-hot labels (int64).
        center_sample: ``"radius"`` (centre sampling) or ``"none"`` (anywhere inside the window).
        center_sample_radius: centre region half-width in strides.

    Returns:
        ``gt_cls``: per query ``(P, num_classes)`` in ``{0, 1}``; ``gt_offsets``: per query ``(P, 2)``
        (left, right) distances in stride units. Both in the windows' dtype (float64).
    """
    if center_sample not in CENTER_SAMPLE_MODES:
        raise ConfigError(
            f"train_cfg.center_sample: expected one of {CENTER_SAMPLE_MODES}, got {center_sample!r}"
        )
    if points.dim() != 2 or points.shape[1] != 4:
        raise ValueError(f"points: expected a (P, 4) table, got shape {tuple(points.shape)}")
    if len(gt_segments) != len(gt_labels):
        raise DataError(
            f"ground truth: {len(gt_segments)} segment tensors but {len(gt_labels)} label tensors"
        )
    gt_cls, gt_offsets = [], []
    for index, (segments, labels) in enumerate(zip(gt_segments, gt_labels)):
        _check_ground_truth(index, segments, labels)
        cls_targets, reg_targets = _assign_single(
            points, segments, labels, center_sample, center_sample_radius
        )
        gt_cls.append(cls_targets)
        gt_offsets.append(reg_targets)
    return gt_cls, gt_offsets


def _check_ground_truth(index: int, segments: Optional[Tensor], labels: Optional[Tensor]) -> None:
    """Shape checks only (no values read, so no device synchronisation)."""
    if segments is None or labels is None:
        raise DataError(
            f"query {index} of the batch has no ground-truth windows/labels; training and "
            "validation-loss passes need them (test splits can only be evaluated)"
        )
    if segments.dim() != 2 or segments.shape[1] != 2:
        raise DataError(
            f"query {index}: segments must be (N, 2) [start, end] in grid units, "
            f"got shape {tuple(segments.shape)}"
        )
    if labels.dim() != 2 or labels.shape[0] != segments.shape[0]:
        raise DataError(
            f"query {index}: one_hot_labels must be (N, num_classes) with N = {segments.shape[0]} "
            f"windows, got shape {tuple(labels.shape)}"
        )


def _assign_single(
    points: Tensor,
    segments: Tensor,
    labels: Tensor,
    center_sample: str,
    radius: float,
) -> Tuple[Tensor, Tensor]:
    """Targets of one query: ``(P, C)`` and ``(P, 2)``; see the module docstring for the rules."""
    num_points, num_gts = points.shape[0], segments.shape[0]
    num_classes = labels.shape[1]
    if num_gts == 0:
        return (
            segments.new_zeros((num_points, num_classes)),  # (P, C)
            segments.new_zeros((num_points, 2)),  # (P, 2)
        )

    t = points[:, 0, None]  # (P, 1) float32
    range_lo, range_hi = points[:, 1, None], points[:, 2, None]  # (P, 1)
    stride = points[:, 3, None]  # (P, 1)
    starts, ends = segments[None, :, 0], segments[None, :, 1]  # (1, N) float64

    # float32 points minus float64 windows -> float64, as in the reference
    dist_left = t - starts  # (P, N)
    dist_right = ends - t  # (P, N)
    distances = torch.stack((dist_left, dist_right), dim=-1)  # (P, N, 2)

    if center_sample == "radius":
        centers = 0.5 * (starts + ends)  # (1, N)
        region_lo = torch.maximum(centers - stride * radius, starts)  # (P, N)
        region_hi = torch.minimum(centers + stride * radius, ends)  # (P, N)
        inside = torch.minimum(t - region_lo, region_hi - t) > 0  # (P, N), strict
    else:
        inside = distances.min(dim=-1).values > 0  # (P, N)

    reach = distances.max(dim=-1).values  # (P, N)
    in_range = (reach >= range_lo) & (reach <= range_hi)  # (P, N), inclusive

    lengths = (ends - starts).expand(num_points, num_gts).clone()  # (P, N)
    lengths.masked_fill_(~(inside & in_range), float("inf"))
    shortest, shortest_index = lengths.min(dim=1)  # (P,)
    ties = (lengths <= shortest[:, None] + LENGTH_TIE_TOLERANCE) & (lengths < float("inf"))

    cls_targets = ties.to(distances.dtype) @ labels.to(distances.dtype)  # (P, C)
    cls_targets.clamp_(min=0.0, max=1.0)

    reg_targets = distances[torch.arange(num_points, device=points.device), shortest_index]  # (P, 2)
    reg_targets = reg_targets / stride
    return cls_targets, reg_targets
