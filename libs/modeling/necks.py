"""Necks between the backbone's pyramid and the heads. GroundNLQ uses ``"identity"``: a LayerNorm
per level and nothing else."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..core.errors import ConfigError
from .blocks import LayerNorm
from .models import register_neck

Tensor = torch.Tensor


@register_neck("identity")
class FPNIdentity(nn.Module):
    """Per-level LayerNorm (``fpn_norms.l``) of levels ``start_level .. end_level - 1``; masks pass through."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channel: int,
        scale_factor: float = 2.0,
        start_level: int = 0,
        end_level: int = -1,
        with_ln: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.start_level = start_level
        self.end_level = len(self.in_channels) if end_level == -1 else end_level
        if not 0 <= start_level < self.end_level <= len(self.in_channels):
            raise ConfigError(
                f"model.fpn_start_level: need 0 <= {start_level} < {self.end_level} <= {len(self.in_channels)} levels"
            )
        self.fpn_norms = nn.ModuleList()
        for level in range(self.start_level, self.end_level):
            if self.in_channels[level] != out_channel:
                raise ConfigError(
                    f"model.fpn_dim: the identity neck needs fpn_dim == embd_dim, got {out_channel} "
                    f"and {self.in_channels[level]}"
                )
            self.fpn_norms.append(LayerNorm(out_channel) if with_ln else nn.Identity())

    def forward(self, feats: Sequence[Tensor], masks: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        out_feats, out_masks = [], []
        for offset, norm in enumerate(self.fpn_norms):
            level = self.start_level + offset
            out_feats.append(norm(feats[level]))
            out_masks.append(masks[level])
        return out_feats, out_masks
