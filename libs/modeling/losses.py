"""The training criterion: sigmoid focal loss, 1-D centre-DIoU loss, the running normaliser, their sum.

Spec section 6. Both losses cast their inputs to float32 (as the reference's TorchScript versions do),
so float64 targets and AMP half-precision outputs give the same numbers. ``Criterion`` puts label
assignment, the losses and the normaliser together: it is the one stateful part of training besides
the weights (``state_dict`` travels in snapshots).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from libs.core.errors import ConfigError, DataError

from . import targets

REDUCTIONS = ("none", "mean", "sum")

# Auto-balanced loss weight (``loss_weight <= 0``) divides by at least this regression loss.
MIN_REG_LOSS_FOR_BALANCE = 0.01


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> Tensor:
    """Focal loss (Lin et al.) on sigmoid outputs, in float32; targets may be soft (label smoothing).

    ``loss = a_t * BCE(z, y) * (1 - p_t)^gamma`` with ``p_t = p y + (1 - p)(1 - y)`` and
    ``a_t = alpha y + (1 - alpha)(1 - y)`` (``alpha < 0`` disables the weighting).
    """
    logits = logits.float()
    targets = targets.float()
    prob = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def ctr_diou_loss_1d(
    pred: Tensor,
    target: Tensor,
    reduction: str = "sum",
    eps: float = 1e-8,
) -> Tensor:
    """Distance-IoU loss between 1-D segments given as (left, right) distances from a shared centre.

    Args:
        pred, target: ``(N, 2)`` non-negative offsets (left, right), same units. Not checked here:
            a check would synchronise with the device on every step; the reference asserts it.

    Returns ``1 - IoU + (centre distance / enclosing length)^2`` per row, reduced.
    """
    pred = pred.float()
    target = target.float()
    left_p, right_p = pred[:, 0], pred[:, 1]
    left_g, right_g = target[:, 0], target[:, 1]

    intersection = torch.min(right_p, right_g) + torch.min(left_p, left_g)
    union = (left_p + right_p) + (left_g + right_g) - intersection
    iou = intersection / union.clamp(min=eps)

    enclosing = torch.max(left_p, left_g) + torch.max(right_p, right_g)
    center_shift = 0.5 * (right_p - left_p - right_g + left_g)
    loss = 1.0 - iou + torch.square(center_shift / enclosing.clamp(min=eps))
    if reduction == "mean" and loss.numel() == 0:
        return 0.0 * pred.sum()
    return _reduce(loss, reduction)


class LossNormalizer:
    """Running average of the number of positive points; both losses are divided by it.

    ``value <- m * value + (1 - m) * max(num_pos, 1)``, updated before use on every train-mode
    forward. The reference keeps it as a Python float, per process, unsynchronised and unsaved;
    ``state_dict`` lets the trainer checkpoint it and an all-reduce of ``num_pos`` (if wanted) is
    the trainer's business.
    """

    def __init__(self, init: float, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"loss normaliser momentum: expected a value in [0, 1], got {momentum}")
        if init <= 0:
            raise ConfigError(f"train_cfg.init_loss_norm: expected a positive number, got {init}")
        self.value = float(init)
        self.momentum = float(momentum)

    def update(self, num_pos: Union[int, float]) -> float:
        """Fold in this step's positive count and return the new value."""
        # same expression as the reference, so the float is bit-identical
        self.value = self.momentum * self.value + (1 - self.momentum) * max(num_pos, 1)
        return self.value

    def state_dict(self) -> Dict[str, float]:
        return {"value": self.value, "momentum": self.momentum}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.value = float(state["value"])
        self.momentum = float(state.get("momentum", self.momentum))

    def __repr__(self) -> str:
        return f"LossNormalizer(value={self.value}, momentum={self.momentum})"


def positive_points(targets: Tensor, valid: Tensor) -> Tensor:
    """``(B, P)`` bool: the points with a label (``targets`` ``(B, P, C)``) at valid positions
    (``valid`` ``(B, P)``), the only ones the regression loss reads."""
    return (targets.sum(-1) > 0) & valid


def compute_losses(
    fpn_masks: List[Tensor],
    cls_logits: List[Tensor],
    offsets: List[Tensor],
    gt_cls: List[Tensor],
    gt_offsets: List[Tensor],
    normalizer: LossNormalizer,
    label_smoothing: float,
    loss_weight: float,
    reduce_count: Callable[[int], float] = float,
) -> Dict[str, Tensor]:
    """The reference's training losses (spec section 6); updates ``normalizer`` once.

    Args:
        fpn_masks: per level ``(B, T_l)`` bool, True = valid.
        cls_logits: per level ``(B, T_l, C)``. offsets: per level ``(B, T_l, 2)`` in stride units.
        gt_cls: per query ``(P, C)``, P = sum of T_l. gt_offsets: per query ``(P, 2)``.
        label_smoothing: eps; targets become ``y (1 - eps) + eps / (C + 1)``.
        loss_weight: weight of the regression loss; ``<= 0`` balances it against the
            classification loss (``cls / max(reg, 0.01)``, detached).
        reduce_count: applied to the batch's positive count before the normaliser update (a
            multi-process run averages it over processes, so every process divides alike).

    Returns ``{"cls_loss", "reg_loss", "final_loss"}``, 0-d float32 tensors.
    """
    valid = torch.cat(fpn_masks, dim=1)  # (B, P) bool
    targets = torch.stack(gt_cls)  # (B, P, C)
    positive = positive_points(targets, valid)  # (B, P)

    num_pos = int(positive.sum().item())  # a host sync: the count decides the normaliser and a branch
    norm = normalizer.update(reduce_count(num_pos))

    num_classes = targets.shape[-1]
    smoothed = targets[valid]  # (V, C), a copy
    smoothed *= 1 - label_smoothing
    smoothed += label_smoothing / (num_classes + 1)

    cls_loss = sigmoid_focal_loss(torch.cat(cls_logits, dim=1)[valid], smoothed, reduction="sum")
    cls_loss = cls_loss / norm

    pred_offsets = torch.cat(offsets, dim=1)[positive]  # (num_pos, 2)
    if num_pos == 0:
        reg_loss = 0 * pred_offsets.sum()
    else:
        target_offsets = torch.stack(gt_offsets)[positive]  # (num_pos, 2)
        reg_loss = ctr_diou_loss_1d(pred_offsets, target_offsets, reduction="sum") / norm

    if loss_weight > 0:
        weight: Union[float, Tensor] = loss_weight
    else:
        weight = cls_loss.detach() / max(reg_loss.item(), MIN_REG_LOSS_FOR_BALANCE)
    final_loss = cls_loss + reg_loss * weight
    return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": final_loss}


class Criterion:
    """Label assignment, losses and the loss normaliser of one model (spec section 6).

    ``assign`` gives each query's targets on the model's points; calling the criterion gives the
    losses of the head outputs against them. ``reduce_count`` (default: the count itself) is what
    a multi-process trainer sets to average the positive count over processes.
    """

    def __init__(self, train_cfg: Dict[str, Any], num_classes: int, momentum: float = 0.9) -> None:
        self.num_classes = num_classes
        self.center_sample = train_cfg["center_sample"]
        self.center_sample_radius = train_cfg["center_sample_radius"]
        self.label_smoothing = train_cfg["label_smoothing"]
        self.loss_weight = train_cfg["loss_weight"]
        self.normalizer = LossNormalizer(train_cfg["init_loss_norm"], momentum)
        self.reduce_count: Callable[[int], float] = float

    def assign(self, points: Sequence[Tensor], segments: Sequence[Tensor], labels: Sequence[Tensor],
               query_ids: Sequence[str]) -> Tuple[List[Tensor], List[Tensor]]:
        """Targets of every query on ``points`` (per level ``(T_l, 4)``): ``targets.assign_labels``."""
        for query_id, query_labels in zip(query_ids, labels):
            if query_labels.shape[-1] != self.num_classes:
                raise DataError(
                    f"query {query_id!r}: one_hot_labels has {query_labels.shape[-1]} classes, model "
                    f"num_classes is {self.num_classes}"
                )
        with torch.no_grad():
            return targets.assign_labels(torch.cat(list(points), dim=0), segments, labels,
                                         self.center_sample, self.center_sample_radius)

    def __call__(self, fpn_masks: List[Tensor], cls_logits: List[Tensor], offsets: List[Tensor],
                 gt_cls: List[Tensor], gt_offsets: List[Tensor]) -> Dict[str, Tensor]:
        return compute_losses(fpn_masks, cls_logits, offsets, gt_cls, gt_offsets, self.normalizer,
                              self.label_smoothing, self.loss_weight, self.reduce_count)

    def state_dict(self) -> Dict[str, float]:
        return self.normalizer.state_dict()

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.normalizer.load_state_dict(state)
