"""The GroundNLQ backbone ("convTransformer"): video and text embeddings, a text stem, a video stem
that cross-attends to the text, and a strided pyramid branch.

The forward pass is split in three so that a clip shared by several queries is embedded once:
``embed_video`` (query-independent: convs + position encoding), ``encode_text`` (per query) and
``fuse`` (video stem + branch, per query). ``forward`` chains them like the reference.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DataError
from .blocks import LayerNorm, MaskedConv1D, sinusoid_table
from .transformer import TransformerBlock
from .models import register_backbone

Tensor = torch.Tensor


@register_backbone("convTransformer")
class ConvTransformerBackbone(nn.Module):
    """Conv embeddings + transformer stems + pyramid branch (spec 5.2).

    ``arch = (n_embd_convs, n_text_stem, n_video_stem, n_branch_cross, n_branch_plain)``; the
    pyramid has ``1 + arch[3] + arch[4]`` levels with stride ``scale_factor ** l``.
    """

    def __init__(
        self,
        n_vid_in: int,
        n_txt_in: int,
        n_embd: int,
        n_head: int,
        n_embd_ks: int,
        max_len: int,
        arch: Sequence[int] = (2, 2, 2, 0, 6),
        mha_win_size: Sequence[int] = (-1,) * 7,
        scale_factor: int = 2,
        with_ln: bool = False,
        attn_pdrop: float = 0.0,
        proj_pdrop: float = 0.0,
        path_pdrop: float = 0.0,
        use_abs_pe: bool = False,
        use_rel_pe: bool = False,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__()
        if len(arch) != 5:
            raise ValueError(f"backbone arch must have 5 entries, got {list(arch)}")
        if len(mha_win_size) != 1 + arch[3] + arch[4]:
            raise ValueError(f"need {1 + arch[3] + arch[4]} window sizes, got {list(mha_win_size)}")
        self.arch = tuple(arch)
        self.max_len = max_len
        self.scale_factor = scale_factor
        self.use_abs_pe = use_abs_pe
        if use_abs_pe:
            pos_embd = sinusoid_table(max_len, n_embd) / (n_embd ** 0.5)  # (1, C, max_len)
            self.register_buffer("pos_embd", pos_embd, persistent=False)

        def embedding(n_in: int, kernel: int) -> Tuple[nn.ModuleList, nn.ModuleList]:
            convs, norms = nn.ModuleList(), nn.ModuleList()
            for idx in range(arch[0]):
                convs.append(MaskedConv1D(n_in if idx == 0 else n_embd, n_embd, kernel, bias=not with_ln))
                norms.append(LayerNorm(n_embd) if with_ln else nn.Identity())
            return convs, norms

        def block(stride: int, window: int, cross: bool) -> TransformerBlock:
            return TransformerBlock(
                n_embd, n_head, stride=stride, window_size=window, cross_attention=cross,
                attn_pdrop=attn_pdrop, proj_pdrop=proj_pdrop, path_pdrop=path_pdrop,
                use_rel_pe=use_rel_pe, use_sdpa=use_sdpa,
            )

        # registration order = the reference's state_dict order
        self.vid_embd, self.vid_embd_norm = embedding(n_vid_in, n_embd_ks)
        self.txt_embd, self.txt_embd_norm = embedding(n_txt_in, 1)
        self.vid_stem = nn.ModuleList([block(1, mha_win_size[0], True) for _ in range(arch[2])])
        self.txt_stem = nn.ModuleList([block(1, -1, False) for _ in range(arch[1])])
        self.branch = nn.ModuleList(
            [block(scale_factor, mha_win_size[1 + idx], True) for idx in range(arch[3])]
            + [block(scale_factor, mha_win_size[1 + idx], False) for idx in range(arch[4])]
        )
        self.apply(self._zero_bias)

    @staticmethod
    def _zero_bias(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def num_levels(self) -> int:
        return 1 + len(self.branch)

    @staticmethod
    def _embed(x: Tensor, mask: Tensor, convs: nn.ModuleList, norms: nn.ModuleList) -> Tuple[Tensor, Tensor]:
        for conv, norm in zip(convs, norms):
            x, mask = conv(x, mask)
            x = F.relu(norm(x))
        return x, mask

    def position_table(self, length: int) -> Tensor:
        """The ``(1, C, length)`` position encoding: sliced, or in eval linearly resampled when
        ``length >= max_len`` (reference; an exact copy at ``max_len``)."""
        if self.training and length > self.max_len:
            raise DataError(f"padded video length {length} exceeds max_seq_len {self.max_len} in training")
        if not self.training and length >= self.max_len:
            return F.interpolate(self.pos_embd, length, mode="linear", align_corners=False)
        return self.pos_embd[:, :, :length]

    def embed_video(
        self, video: Tensor, video_mask: Tensor, padded_length: Optional[int] = None
    ) -> Tuple[Tensor, Tensor]:
        """video ``(V, C_v, T)`` -> embedding ``(V, C, T)`` with the position encoding added.

        ``padded_length``: the batch's padded length when ``video`` holds only its first ``T``
        columns (trimmed pyramid); the position table depends on it (resampled beyond max_len).
        """
        x, mask = self._embed(video, video_mask, self.vid_embd, self.vid_embd_norm)
        if self.use_abs_pe:
            length = x.shape[-1]
            table = self.position_table(length if padded_length is None else padded_length)
            x = x + table[:, :, :length] * mask.to(x.dtype)
        return x, mask

    def encode_text(self, text: Tensor, text_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """text ``(Q, C_t, L)`` -> text-stem output ``(Q, C, L)`` (what cross-attention reads)."""
        y, mask = self._embed(text, text_mask, self.txt_embd, self.txt_embd_norm)
        for blk in self.txt_stem:
            y, mask = blk(y, mask)
        return y, mask

    def fuse(
        self,
        x: Tensor,
        x_mask: Tensor,
        text: Tensor,
        text_mask: Tensor,
        video_index: Optional[Tensor] = None,
        level_lengths: Optional[Sequence[int]] = None,
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Video stem (cross-attending to the text) and pyramid branch; one output per level
        ``(Q, C, T_l)`` with its mask.

        ``video_index`` ``(Q,)``: x / x_mask hold one row per clip (``(V, C, T)``) and query ``q``
        reads row ``video_index[q]``; the first stem block's self-attention then runs per clip.
        ``level_lengths``: the length ``T_l`` to produce at each level (see
        ``pyramid_lengths``); None keeps ``T / s_l``. Columns a level gains past what the block
        computed are padding, where every block's output is exactly zero.
        """
        stem = list(self.vid_stem)
        if video_index is not None:
            if stem:
                x, x_mask = stem.pop(0)(x, x_mask, text, text_mask, row_index=video_index)
            else:
                x, x_mask = x.index_select(0, video_index), x_mask.index_select(0, video_index)
        for blk in stem:
            x, x_mask = blk(x, x_mask, text, text_mask)
        feats, masks = [x], [x_mask]
        for level, blk in enumerate(self.branch, start=1):
            appended = 0
            if level_lengths is not None:
                computed = min(level_lengths[level], x.shape[-1] // self.scale_factor)
                appended = level_lengths[level] - computed
                x, x_mask = x[..., : computed * self.scale_factor], x_mask[..., : computed * self.scale_factor]
            x, x_mask = blk(x, x_mask, text, text_mask)
            if appended:
                x, x_mask = F.pad(x, (0, appended)), F.pad(x_mask, (0, appended), value=False)
            feats.append(x)
            masks.append(x_mask)
        return feats, masks

    def forward(
        self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor
    ) -> Tuple[List[Tensor], List[Tensor]]:
        x, x_mask = self.embed_video(video, video_mask)
        y, y_mask = self.encode_text(text, text_mask)
        return self.fuse(x, x_mask, y, y_mask)


def pyramid_lengths(num_valid: int, padded_length: int, num_levels: int, scale_factor: int) -> List[int]:
    """The shortest length of each pyramid level that keeps every valid output of padding to
    ``padded_length``: the valid length ``ceil(num_valid / s_l)`` plus one padded column, capped
    at ``padded_length / s_l``.

    Why one column suffices: kernel-3 convolutions, the pooling skip and the heads read at most
    one column past a level's last valid position, invalid keys get zero attention weight, and
    block outputs are exactly zero at padded positions (so that column can be appended as zeros).
    """
    lengths = []
    for level in range(num_levels):
        stride = scale_factor ** level
        lengths.append(min(padded_length // stride, -(-num_valid // stride) + 1))
    return lengths
