"""Location generators: the grid points at which the heads predict."""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn

from .models import register_generator

Tensor = torch.Tensor


@register_generator("point")
class PointGenerator(nn.Module):
    """One point per grid position and pyramid level.

    Level ``l`` gives a ``(T_l, 4)`` float32 table with rows ``[t, lo_l, hi_l, s_l]``: position
    ``t = 0, s_l, 2 s_l, ...`` in feature units (no half-stride offset unless ``use_offset``), the
    level's regression range and its stride. Points are computed for the actual lengths on the
    features' device, so there is no buffer (the reference's buffers are non-persistent anyway)
    and no length limit; ``max_seq_len`` is accepted for the reference's signature.
    """

    def __init__(
        self,
        max_seq_len: float,
        fpn_strides: Sequence[int],
        regression_range: Sequence[Sequence[float]],
        use_offset: bool = False,
    ) -> None:
        super().__init__()
        if len(regression_range) != len(fpn_strides):
            raise ValueError(f"{len(fpn_strides)} pyramid levels but {len(regression_range)} regression ranges")
        self.max_seq_len = max_seq_len
        self.fpn_strides = [int(s) for s in fpn_strides]
        self.regression_range = [(float(lo), float(hi)) for lo, hi in regression_range]
        self.use_offset = use_offset

    def level_points(self, level: int, length: int, device: torch.device) -> Tensor:
        """The ``(length, 4)`` point table of one level."""
        stride = self.fpn_strides[level]
        lo, hi = self.regression_range[level]
        t = torch.arange(length, dtype=torch.float32, device=device) * stride  # (T_l,)
        if self.use_offset:
            t = t + 0.5 * stride
        rest = torch.tensor([lo, hi, float(stride)], dtype=torch.float32, device=device).expand(length, 3)
        return torch.cat([t[:, None], rest], dim=1)  # (T_l, 4)

    def forward(self, feats: Sequence[Tensor]) -> List[Tensor]:
        if len(feats) != len(self.fpn_strides):
            raise ValueError(f"{len(feats)} feature levels, {len(self.fpn_strides)} strides")
        return [self.level_points(level, f.shape[-1], f.device) for level, f in enumerate(feats)]
