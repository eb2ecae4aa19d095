"""Classification and regression heads, shared across pyramid levels (spec 5.3).

Both: ``num_layers - 1`` masked k-conv + LayerNorm + ReLU layers, then the output conv. The
classifier's bias starts at the prior ``-log((1 - p) / p)``; the regression output is scaled per
level (``scale.l``) and passed through ReLU, giving offsets in units of the level's stride.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LayerNorm, MaskedConv1D, Scale

Tensor = torch.Tensor


def prior_bias(prior_prob: float) -> float:
    """Logit of the prior probability: ``-log((1 - p) / p)`` (-4.59512 for p = 0.01)."""
    return -math.log((1.0 - prior_prob) / prior_prob)


def _conv_stack(
    input_dim: int, feat_dim: int, num_layers: int, kernel_size: int, with_ln: bool
) -> Tuple[nn.ModuleList, nn.ModuleList]:
    convs, norms = nn.ModuleList(), nn.ModuleList()
    for idx in range(num_layers - 1):
        convs.append(MaskedConv1D(input_dim if idx == 0 else feat_dim, feat_dim, kernel_size, bias=not with_ln))
        norms.append(LayerNorm(feat_dim) if with_ln else nn.Identity())
    return convs, norms


def _run_stack(x: Tensor, mask: Tensor, convs: nn.ModuleList, norms: nn.ModuleList,
               keep: Optional[Tensor] = None) -> Tensor:
    """The hidden layers; ``keep`` ``(B, 1, T)`` re-zeroes columns that stand for positions
    outside the sequence after every layer, so they act as the convolution's zero padding."""
    for conv, norm in zip(convs, norms):
        x, _ = conv(x, mask)
        x = F.relu(norm(x))
        if keep is not None:
            x = x * keep
    return x


class ClsHead(nn.Module):
    """Per-level logits ``(B, num_classes, T_l)`` (channel-first, zero at invalid positions)."""

    def __init__(
        self,
        input_dim: int,
        feat_dim: int,
        num_classes: int,
        prior_prob: float = 0.01,
        num_layers: int = 3,
        kernel_size: int = 3,
        with_ln: bool = False,
        empty_cls: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.head, self.norm = _conv_stack(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.cls_head = MaskedConv1D(feat_dim, num_classes, kernel_size)
        nn.init.constant_(self.cls_head.conv.bias, prior_bias(prior_prob))
        # classes without training data: a near-zero prior keeps them silent (reference)
        for idx in empty_cls:
            nn.init.constant_(self.cls_head.conv.bias[idx], prior_bias(1e-6))

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> List[Tensor]:
        out = []
        for x, mask in zip(feats, masks):
            logits, _ = self.cls_head(_run_stack(x, mask, self.head, self.norm), mask)
            out.append(logits)  # (B, num_classes, T_l)
        return out


class RegHead(nn.Module):
    """Per-level offsets ``(B, 2, T_l)`` (left, right) in stride units, non-negative."""

    def __init__(
        self,
        input_dim: int,
        feat_dim: int,
        fpn_levels: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        with_ln: bool = False,
    ) -> None:
        super().__init__()
        self.fpn_levels = fpn_levels
        # an output reads the input up to this many positions away (num_layers k-convs)
        self.receptive_radius = num_layers * (kernel_size // 2)
        self.head, self.norm = _conv_stack(input_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.scale = nn.ModuleList([Scale() for _ in range(fpn_levels)])
        self.offset_head = MaskedConv1D(feat_dim, 2, kernel_size)

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> List[Tensor]:
        if len(feats) != self.fpn_levels:
            raise ValueError(f"RegHead built for {self.fpn_levels} levels, got {len(feats)}")
        out = []
        for level, (x, mask) in enumerate(zip(feats, masks)):
            offsets, _ = self.offset_head(_run_stack(x, mask, self.head, self.norm), mask)
            out.append(F.relu(self.scale[level](offsets)))  # (B, 2, T_l)
        return out

    def forward_at(self, feats: Sequence[Tensor], masks: Sequence[Tensor], positives: Sequence[Tensor],
                   spans: Optional[Sequence[int]] = None) -> List[Tensor]:
        """Per-level offsets ``(B, 2, T_l)`` computed only around ``positives`` (per level ``(B, T_l)``
        bool): exact where ``positives`` is True, zero elsewhere.

        Training reads the regression output at positive points only, which sit in one short run
        per query and level, so each query runs the head on the window ``[first - r, last + r]`` of
        its positives (``r`` = ``receptive_radius``; positions outside the sequence are zero, as the
        convolution's padding) instead of the whole level: same loss and gradients, a fraction of
        the head's cost. ``spans``: per level, a bound on ``last - first`` known on the host (the
        windows are then that wide); None reads the exact widths back (one host synchronisation).
        """
        if len(feats) != self.fpn_levels:
            raise ValueError(f"RegHead built for {self.fpn_levels} levels, got {len(feats)}")
        radius = self.receptive_radius
        firsts, lasts = [], []
        for positive in positives:
            index = torch.arange(positive.shape[1], device=positive.device)
            has_positive = positive.any(dim=1)
            first = torch.where(positive, index, positive.shape[1]).amin(dim=1)  # (B,)
            firsts.append(torch.where(has_positive, first, 0))
            if spans is None:
                last = torch.where(positive, index, -1).amax(dim=1)
                lasts.append(torch.where(has_positive, last, 0))
        if spans is not None:
            widths = list(spans)
        else:
            widths = (torch.stack(lasts) - torch.stack(firsts)).amax(dim=1).tolist()  # (levels,)
        out = []
        for level, (x, mask, positive) in enumerate(zip(feats, masks, positives)):
            batch, channels, length = x.shape
            index = firsts[level][:, None] - radius + torch.arange(int(widths[level]) + 1 + 2 * radius, device=x.device)
            inside = (index >= 0) & (index < length)  # (B, W)
            index = index.clamp(0, length - 1)
            keep = inside[:, None, :].to(x.dtype)  # (B, 1, W)
            window = x.gather(2, index[:, None, :].expand(batch, channels, -1)) * keep  # (B, C, W)
            window_mask = mask.gather(2, index[:, None, :]) & inside[:, None, :]
            offsets, _ = self.offset_head(_run_stack(window, window_mask, self.head, self.norm, keep), window_mask)
            offsets = F.relu(self.scale[level](offsets)) * (positive.gather(1, index) & inside)[:, None, :].to(x.dtype)
            full = offsets.new_zeros(batch, offsets.shape[1], length)
            out.append(full.scatter_add(2, index[:, None, :].expand_as(offsets), offsets))  # (B, 2, T_l)
        return out
