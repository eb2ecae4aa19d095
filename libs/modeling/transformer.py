"""The pre-LN transformer block of the GroundNLQ backbone: attention (``attention.py``) between the
basic layers (``blocks.py``), with optional stride-2 pooling and cross-attention to the text.

Parameter names and registration order match the reference, so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .attention import LocalMaskedMHCA, MaskedMHA, MaskedMHCA
from .blocks import AffineDropPath, LayerNorm, chunked_mlp

Tensor = torch.Tensor


class TransformerBlock(nn.Module):
    """Pre-LN transformer block with optional stride-2 pooling and optional cross-attention.

    1. ``a = attn(ln1(x))``; ``h = skip(x) * m' + drop_path_attn(a)`` (skip: identity or max-pool
       of the unmasked input);
    2. cross blocks: ``h = h * m' + drop_path_attn(cross_attn(ln3(h), ln3(text)))`` -- the same
       ``ln3`` for video and text and the same ``drop_path_attn`` scale, as in the reference;
    3. ``h = h + drop_path_mlp(mlp(ln2(h)) * m')``; ``use_chunked_mlp`` (model key ``chunked_mlp``)
       computes the MLP in cache-sized column chunks at inference (same numbers to summation order).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        stride: int = 1,
        window_size: int = -1,
        cross_attention: bool = False,
        attn_pdrop: float = 0.0,
        proj_pdrop: float = 0.0,
        path_pdrop: float = 0.0,
        use_rel_pe: bool = False,
        use_sdpa: bool = True,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.ln1 = LayerNorm(n_embd)
        self.ln2 = LayerNorm(n_embd)
        if window_size > 1:
            self.attn = LocalMaskedMHCA(
                n_embd, n_head, window_size, stride=stride,
                attn_pdrop=attn_pdrop, proj_pdrop=proj_pdrop, use_rel_pe=use_rel_pe,
            )
        else:
            self.attn = MaskedMHCA(
                n_embd, n_head, stride=stride, attn_pdrop=attn_pdrop, proj_pdrop=proj_pdrop, use_sdpa=use_sdpa
            )
        self.cross_attention = cross_attention
        if cross_attention:
            self.cross_attn = MaskedMHA(n_embd, n_head, attn_pdrop=attn_pdrop, proj_pdrop=proj_pdrop, use_sdpa=use_sdpa)
            self.ln3 = LayerNorm(n_embd)
        if stride > 1:
            self.pool_skip = nn.MaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2)
        else:
            self.pool_skip = nn.Identity()
        hidden = mlp_ratio * n_embd
        self.mlp = nn.Sequential(
            nn.Conv1d(n_embd, hidden, 1),
            nn.GELU(),
            nn.Dropout(proj_pdrop),
            nn.Conv1d(hidden, n_embd, 1),
            nn.Dropout(proj_pdrop),
        )
        self.use_chunked_mlp = True
        if path_pdrop > 0.0:
            self.drop_path_attn = AffineDropPath(n_embd, drop_prob=path_pdrop)
            self.drop_path_mlp = AffineDropPath(n_embd, drop_prob=path_pdrop)
        else:
            self.drop_path_attn = nn.Identity()
            self.drop_path_mlp = nn.Identity()

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        text: Optional[Tensor] = None,
        text_mask: Optional[Tensor] = None,
        row_index: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """x ``(B, C, T)``, mask ``(B, 1, T)``; text ``(Q, C, L)`` / text_mask ``(Q, 1, L)`` (cross blocks).

        ``row_index`` ``(Q,)``: x holds one row per clip and query ``q`` reads row ``row_index[q]``.
        The self-attention does not read the text, so it runs once per clip and its output is
        expanded (exact: only drop path, applied after the expansion, draws per query); with
        attention dropout in training it runs per query instead, to keep independent draws.
        """
        if row_index is not None and self.training and (self.attn.attn_drop.p > 0 or self.attn.proj_drop.p > 0):
            x, mask, row_index = x.index_select(0, row_index), mask.index_select(0, row_index), None
        out, out_mask = self.attn(self.ln1(x), mask)
        if row_index is not None:
            x, out, out_mask = (t.index_select(0, row_index) for t in (x, out, out_mask))  # (Q, C, T')
        valid = out_mask.to(out.dtype)  # (Q, 1, T')
        out = self.pool_skip(x) * valid + self.drop_path_attn(out)
        if self.cross_attention and text is not None:
            cross = self.cross_attn(self.ln3(out), out_mask, self.ln3(text), text_mask)
            out = out * valid + self.drop_path_attn(cross)
        out = out + self.drop_path_mlp(self._mlp(self.ln2(out)) * valid)
        return out, out_mask

    def _mlp(self, x: Tensor) -> Tensor:
        """The MLP, chunked (``blocks.chunked_mlp``) where autograd does not record and the
        products run in float32: with a backward pass, the two full-width convolutions are faster
        (training step 1.38 s against 1.47 s chunked, bench/RESULTS.md), and dropout draws inside
        the Sequential; under bf16 autocast the small chunk products were 2.9x slower than the
        convolutions on a CPU without bf16 arithmetic (22.9 against 7.9 s at 11 x 384 x 901)."""
        if self.use_chunked_mlp and not torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            return chunked_mlp(x, self.mlp[0], self.mlp[3])
        return self.mlp(x)
