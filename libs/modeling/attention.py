"""Masked attention layers: global conv-attention (text stem), local banded conv-attention (video
stem and pyramid) and video -> text cross-attention.

Layouts: features ``(B, C, T)``, masks bool ``(B, 1, T)``; heads split channels as
``C = n_head * head_dim`` (channel ``h * head_dim + d``), as in the reference. Parameter names and
registration order match the reference's ``MaskedMHCA`` / ``LocalMaskedMHCA`` / ``MaskedMHA``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import LayerNorm, MaskedConv1D

Tensor = torch.Tensor

# additive score of an invalid (padded) key inside the local window; the reference uses -1e4, not -inf
LOCAL_INVALID_KEY_SCORE = -1e4


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """``(B, C, T)`` -> ``(B, H, T, C // H)`` (a view when possible)."""
    batch, channels, length = x.shape
    return x.view(batch, n_head, channels // n_head, length).transpose(2, 3)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, T, D)`` -> ``(B, H * D, T)``."""
    batch, n_head, length, head_dim = x.shape
    return x.transpose(2, 3).reshape(batch, n_head * head_dim, length)


def masked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor,
    scale: float,
    dropout_p: float = 0.0,
    use_sdpa: bool = True,
) -> Tensor:
    """Softmax attention over all valid keys.

    q ``(B, H, Tq, D)``, k / v ``(B, H, Tk, D)``, key_mask bool ``(B, 1, Tk)``. Invalid keys get
    ``-inf`` scores and their values are zeroed (reference). Every row needs one valid key.
    Returns ``(B, H, Tq, D)``. ``use_sdpa`` selects the fused kernel; both paths agree to rounding.
    """
    v = v * key_mask[:, :, :, None].to(v.dtype)  # (B, H, Tk, D)
    if use_sdpa:
        attn_mask = key_mask[:, :, None, :]  # (B, 1, 1, Tk), True = attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~key_mask[:, :, None, :], float("-inf"))
    probs = F.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v  # (B, H, Tq, D)


def banded_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    window_size: int,
    scale: float,
    rel_pe: Optional[Tensor] = None,
    dropout: Optional[nn.Module] = None,
) -> Tensor:
    """Local attention: query ``i`` attends to keys ``j`` with ``|i - j| <= window_size // 2``.

    q / k / v ``(B, H, D, T)`` (channel-first per head), mask bool ``(B, 1, T)`` for queries and
    keys. Reference masking: keys outside the sequence ``-inf``; invalid keys additive ``-1e4``;
    rows of invalid queries zeroed after the softmax. The band is computed as ``window_size``
    shifted products, so memory is linear in T (no T x T scores, no overlapping chunk copies).
    Returns ``(B, H, D, T)``.
    """
    _, num_heads, _, length = q.shape
    half = window_size // 2
    q = q * scale
    k_padded = F.pad(k, (half, half))  # (B, H, D, T + 2w)
    # scores[:, :, d, i] = q_i . k_{i + d - half}
    scores = torch.stack(
        [(q * k_padded[..., d:d + length]).sum(dim=2) for d in range(window_size)], dim=2
    )  # (B, H, W, T)

    key_valid = F.pad(mask, (half, half), value=False)  # (B, 1, T + 2w)
    in_range = F.pad(torch.ones_like(mask[:1]), (half, half), value=False)  # (1, 1, T + 2w)
    key_valid = key_valid.unfold(-1, window_size, 1).transpose(-1, -2)  # (B, 1, W, T)
    in_range = in_range.unfold(-1, window_size, 1).transpose(-1, -2)  # (1, 1, W, T)
    zero = scores.new_zeros(())
    bias = torch.where(key_valid, zero, zero + LOCAL_INVALID_KEY_SCORE)
    bias = torch.where(in_range, bias, zero + float("-inf"))  # (B, 1, W, T)
    scores = scores + bias
    if rel_pe is not None:
        scores = scores + rel_pe.reshape(1, num_heads, window_size, 1)
    probs = F.softmax(scores, dim=2)
    probs = probs.masked_fill(~mask[:, :, None, :], 0.0)  # (B, H, W, T)
    if dropout is not None:
        probs = dropout(probs)

    v_padded = F.pad(v, (half, half))  # (B, H, D, T + 2w)
    out = probs[:, :, 0:1, :] * v_padded[..., 0:length]
    for d in range(1, window_size):
        out = out + probs[:, :, d:d + 1, :] * v_padded[..., d:d + length]
    return out  # (B, H, D, T)


# queries per block of the blocked local attention: each block is one (c, c + window - 1) matrix
# product; 32 balanced product size against the out-of-band waste on a 2-core CPU (measured)
LOCAL_ATTENTION_BLOCK = 32


def blocked_local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    window_size: int,
    scale: float,
    rel_pe: Optional[Tensor] = None,
    dropout: Optional[nn.Module] = None,
    block_size: int = LOCAL_ATTENTION_BLOCK,
) -> Tensor:
    """The same local attention as :func:`banded_attention`, computed with matrix products.

    Queries are cut into blocks of ``block_size``; each block multiplies against the
    ``block_size + window_size - 1`` keys its band can reach, and out-of-band entries get
    ``-inf`` (exactly zero weight), so the result equals the banded one up to summation order.
    Why: ``window_size`` shifted elementwise products are memory-bound, a small GEMM per block is
    not (about 2x faster on CPU); memory stays linear in T. Query rows past T (block padding)
    keep their band finite so that the softmax backward never sees an all ``-inf`` row.
    Shapes as :func:`banded_attention`: q / k / v ``(B, H, D, T)``, mask ``(B, 1, T)``.
    """
    batch, num_heads, head_dim, length = q.shape
    half = window_size // 2
    block = block_size  # fixed, even past T: the same GEMM shapes (and rounding) for every length
    num_blocks = -(-length // block)
    tail = num_blocks * block - length
    span = block + 2 * half
    device = q.device

    def key_windows(x: Tensor) -> Tensor:  # (B, H, D, T) -> overlapping (B, H, n, D, c + 2w)
        return F.pad(x, (half, tail + half)).unfold(-1, span, block).transpose(2, 3)

    q_blocks = F.pad(q * scale, (0, tail)).view(batch, num_heads, head_dim, num_blocks, block)
    q_blocks = q_blocks.permute(0, 1, 3, 4, 2)  # (B, H, n, c, D)
    scores = torch.matmul(q_blocks, key_windows(k))  # (B, H, n, c, c + 2w)

    rows = torch.arange(block, device=device)[:, None]
    cols = torch.arange(span, device=device)[None, :]
    in_band = (cols >= rows) & (cols <= rows + 2 * half)  # (c, c + 2w): key = query + col - row - w
    key_pos = torch.arange(num_blocks, device=device)[:, None] * block + cols - half  # (n, c + 2w)
    in_range = (key_pos >= 0) & (key_pos < length)
    query_pad = (torch.arange(num_blocks * block, device=device) >= length).view(num_blocks, block, 1)
    allowed = in_band & (in_range[:, None, :] | query_pad)  # (n, c, c + 2w)
    key_valid = F.pad(mask, (half, tail + half), value=False).unfold(-1, span, block)  # (B, 1, n, c + 2w)
    zero = scores.new_zeros(())
    bias = torch.where(key_valid, zero, zero + LOCAL_INVALID_KEY_SCORE)[:, :, :, None, :]
    bias = torch.where(allowed, bias, zero + float("-inf"))  # (B, 1, n, c, c + 2w)
    scores = scores + bias
    if rel_pe is not None:
        offset = (cols - rows).clamp(0, window_size - 1)  # (c, c + 2w): window offset of each entry
        scores = scores + rel_pe.reshape(num_heads, window_size)[:, offset][None, :, None]
    probs = F.softmax(scores, dim=-1)
    query_valid = F.pad(mask, (0, tail), value=False).view(batch, 1, num_blocks, block, 1)
    probs = probs.masked_fill(~query_valid, 0.0)  # (B, H, n, c, c + 2w)
    if dropout is not None:
        probs = dropout(probs)
    out = torch.matmul(probs, key_windows(v).transpose(-1, -2))  # (B, H, n, c, D)
    out = out.permute(0, 1, 4, 2, 3).reshape(batch, num_heads, head_dim, num_blocks * block)
    return out[..., :length]  # (B, H, D, T)


def _overlapping_chunks(x: Tensor, half: int) -> Tensor:
    """``(N, T, D)`` with ``T % (2 half) == 0`` -> a view ``(N, T // half - 1, 2 half, D)`` of
    chunks of ``2 half`` positions overlapping by ``half``: chunk ``c`` holds ``[c half, c half + 2 half)``."""
    x = x.contiguous()
    rows, length, dim = x.shape
    return x.as_strided((rows, length // half - 1, 2 * half, dim), (length * dim, half * dim, dim, 1))


def _sliding_chunk_scores(query: Tensor, key: Tensor, half: int) -> Tensor:
    """Band scores ``(N, T, 2 half + 1)``, entry ``[i, d] = query_i . key_{i + d - half}``, from the full
    ``2 half x 2 half`` products of overlapping chunks (the reference's Longformer algorithm).

    query / key ``(N, T, D)``, ``T % (2 half) == 0``. Entries whose key lies outside ``[0, T)`` hold
    arbitrary finite values; the caller masks them.
    """
    chunk_scores = torch.matmul(
        _overlapping_chunks(query, half), _overlapping_chunks(key, half).transpose(-1, -2)
    )  # (N, C, 2h, 2h): [c, x, y] = q_{ch + x} . k_{ch + y}
    rows, num_chunks, size, _ = chunk_scores.shape
    # a spare zero chunk at each end keeps every strided read below inside the storage
    padded = F.pad(chunk_scores, (0, 0, 0, 0, 1, 1)).contiguous()  # (N, C + 2, 2h, 2h)
    area, diagonal_step = size * size, size + 1
    row_stride = (num_chunks + 2) * area

    def diagonals(offset: int, num_blocks: int, width: int) -> Tensor:
        # out[n, b, r, e] = padded.flat[n, offset + b * area + r * (2h + 1) + e]: in one chunk, row r
        # and column r + e, i.e. the key e columns right of the query's diagonal
        return padded.as_strided((rows, num_blocks, half, width), (row_stride, area, diagonal_step, 1), offset)

    # queries come in blocks of ``half``: block b, row r is query i = b h + r (blocks 0..C)
    # keys left of i (d < h) sit in chunk b - 1 at row h + r; block 0 reads chunk 0 at row r
    left = torch.cat([diagonals(area - half, 1, half), diagonals(area + half * size, num_chunks, half)], dim=1)
    # keys from i rightwards (d >= h) sit in chunk b at row r; the last block reads chunk C - 1 at row h + r
    right = torch.cat(
        [diagonals(area, num_chunks, half + 1), diagonals(num_chunks * area + half * size + half, 1, half + 1)], dim=1
    )
    band = torch.cat([left, right], dim=-1)  # (N, C + 1, h, 2h + 1)
    return band.reshape(rows, (num_chunks + 1) * half, 2 * half + 1)


def _sliding_chunk_values(probs: Tensor, value: Tensor, half: int) -> Tensor:
    """``out_i = sum_d probs[i, d] value_{i + d - half}`` as one product per block of ``half`` queries
    against the ``3 half`` keys it can reach (values outside ``[0, T)`` are zero).

    probs ``(N, T, 2 half + 1)``, value ``(N, T, D)``; returns ``(N, T, D)``.
    """
    rows, length, width = probs.shape
    dim = value.shape[-1]
    num_blocks = length // half
    # skew each block's rows (h, 2h + 1) into (h, 3h): row r moves r columns to the right
    skewed = F.pad(probs.reshape(rows, num_blocks, half, width), (0, half))  # (N, n, h, 3h + 1)
    skewed = skewed.flatten(2)[..., : half * 3 * half].reshape(rows, num_blocks, half, 3 * half)
    padded = F.pad(value, (0, 0, half, half)).contiguous()  # (N, T + 2h, D)
    windows = padded.as_strided(
        (rows, num_blocks, 3 * half, dim), ((length + 2 * half) * dim, half * dim, dim, 1)
    )  # (N, n, 3h, D): block b reads keys [b h - h, b h + 2h)
    return torch.matmul(skewed, windows).reshape(rows, length, dim)


def chunked_local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    window_size: int,
    scale: float,
    rel_pe: Optional[Tensor] = None,
    dropout: Optional[nn.Module] = None,
) -> Tensor:
    """The reference's local attention algorithm (Longformer sliding chunks), for reference mode.

    Time is cut into chunks of ``2w`` (``w = window_size // 2``) overlapping by ``w``; every chunk
    pair's full ``2w x 2w`` score matrix is computed and the band extracted; the invalid-key bias
    (``-1e4``) goes through the same chunked product (of ones with the bias), locations before
    the start or past the end get ``-inf``, the rows of invalid queries are zeroed after the
    softmax, and values are gathered per block of ``w`` queries over ``3w`` keys. The reference
    requires ``T % 2w == 0``; other lengths are padded here with invalid positions, which get
    zero weight, so valid outputs equal :func:`banded_attention` to rounding. Why keep it:
    reference-mode benchmarks and parity checks run the reference's arithmetic and memory
    (about twice the band's score entries). Shapes as :func:`banded_attention`.
    """
    batch, num_heads, head_dim, length = q.shape
    half = window_size // 2
    padded_length = max(1, -(-length // (2 * half))) * 2 * half
    extra = padded_length - length

    def time_major(x: Tensor) -> Tensor:  # (B, H, D, T) -> (B * H, T', D), the reference's layout
        return F.pad(x, (0, extra)).permute(0, 1, 3, 2).reshape(batch * num_heads, padded_length, head_dim)

    scores = _sliding_chunk_scores(time_major(q * scale), time_major(k), half)  # (B * H, T', W)
    key = torch.arange(padded_length, device=q.device)[:, None] + torch.arange(window_size, device=q.device) - half
    outside = (key < 0) | (key >= padded_length)  # (T', W): before the start / past the end
    scores = scores.masked_fill(outside, float("-inf")).view(batch, num_heads, padded_length, window_size)
    if rel_pe is not None:
        scores = scores + rel_pe.reshape(1, num_heads, 1, window_size)
    valid = F.pad(mask, (0, extra), value=False).view(batch, padded_length, 1)  # (B, T', 1)
    key_bias = torch.zeros(valid.shape, dtype=scores.dtype, device=q.device)
    key_bias = key_bias.masked_fill(~valid, LOCAL_INVALID_KEY_SCORE)  # (B, T', 1)
    bias = _sliding_chunk_scores(torch.ones_like(key_bias), key_bias, half)  # (B, T', W): 0 or -1e4
    scores = scores + bias.masked_fill(outside, float("-inf"))[:, None]
    probs = F.softmax(scores, dim=-1)
    probs = probs.masked_fill(~valid[:, None], 0.0)  # (B, H, T', W)
    if dropout is not None:
        probs = dropout(probs)
    out = _sliding_chunk_values(probs.reshape(batch * num_heads, padded_length, window_size), time_major(v), half)
    out = out.view(batch, num_heads, padded_length, head_dim)[:, :, :length]  # (B, H, T, D)
    return out.permute(0, 1, 3, 2)  # (B, H, D, T)


# model.local_attn_impl -> kernel; all give the reference's numbers up to summation order
LOCAL_ATTENTION_KERNELS = {
    "blocked": blocked_local_attention,  # block GEMMs: the fastest on CPU, memory linear in T
    "banded": banded_attention,  # window_size shifted elementwise products, memory linear in T
    "chunked": chunked_local_attention,  # the reference's overlapping chunks (reference mode)
}


class _ConvProjectedAttention(nn.Module):
    """Shared front end of the conv-attention layers: depthwise conv + LayerNorm, then 1x1 q/k/v.

    ``stride`` > 1 downsamples queries, keys and values alike (depthwise kernel ``stride + 1``).
    """

    def __init__(self, n_embd: int, n_head: int, stride: int, attn_pdrop: float, proj_pdrop: float) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"embedding dim {n_embd} is not divisible by n_head {n_head}")
        if stride != 1 and stride % 2 != 0:
            raise ValueError(f"attention stride must be 1 or even, got {stride}")
        self.n_embd = n_embd
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.stride = stride
        kernel = stride + 1 if stride > 1 else 3
        self.query_conv = MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)
        self.query_norm = LayerNorm(n_embd)
        self.key_conv = MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)
        self.key_norm = LayerNorm(n_embd)
        self.value_conv = MaskedConv1D(n_embd, n_embd, kernel, stride=stride, groups=n_embd, bias=False)
        self.value_norm = LayerNorm(n_embd)
        self.key = nn.Conv1d(n_embd, n_embd, 1)
        self.query = nn.Conv1d(n_embd, n_embd, 1)
        self.value = nn.Conv1d(n_embd, n_embd, 1)
        self.attn_drop = nn.Dropout(attn_pdrop)
        self.proj_drop = nn.Dropout(proj_pdrop)
        self.proj = nn.Conv1d(n_embd, n_embd, 1)

    def _project(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns q, k, v ``(B, C, T')`` and their mask ``(B, 1, T')``."""
        q, out_mask = self.query_conv(x, mask)
        k, _ = self.key_conv(x, mask)
        v, _ = self.value_conv(x, mask)
        q = self.query(self.query_norm(q))
        k = self.key(self.key_norm(k))
        v = self.value(self.value_norm(v))
        return q, k, v, out_mask

    def _output(self, out: Tensor, out_mask: Tensor) -> Tensor:
        return self.proj_drop(self.proj(out)) * out_mask.to(out.dtype)


class MaskedMHCA(_ConvProjectedAttention):
    """Global multi-head conv-attention (text stem): every valid key is visible."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        stride: int = 1,
        attn_pdrop: float = 0.0,
        proj_pdrop: float = 0.0,
        use_sdpa: bool = True,
    ) -> None:
        super().__init__(n_embd, n_head, stride, attn_pdrop, proj_pdrop)
        self.use_sdpa = use_sdpa

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        q, k, v, out_mask = self._project(x, mask)
        dropout_p = self.attn_drop.p if self.training else 0.0
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # (B, H, T', D)
        out = masked_attention(q, k, v, out_mask, self.scale, dropout_p, self.use_sdpa)
        return self._output(merge_heads(out), out_mask), out_mask


class LocalMaskedMHCA(_ConvProjectedAttention):
    """Local (windowed) multi-head conv-attention (video stem and pyramid).

    ``impl`` names the kernel (a key of ``LOCAL_ATTENTION_KERNELS``: "blocked", "banded" or
    "chunked"); all give the reference's numbers (they differ by summation order only).
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        window_size: int,
        stride: int = 1,
        attn_pdrop: float = 0.0,
        proj_pdrop: float = 0.0,
        use_rel_pe: bool = False,
        impl: str = "blocked",
    ) -> None:
        super().__init__(n_embd, n_head, stride, attn_pdrop, proj_pdrop)
        if impl not in LOCAL_ATTENTION_KERNELS:
            raise ValueError(f"local attention impl must be one of {tuple(LOCAL_ATTENTION_KERNELS)}, got {impl!r}")
        self.impl = impl
        if window_size <= 1 or window_size % 2 != 1:
            raise ValueError(f"local attention needs an odd window size > 1, got {window_size}")
        self.window_size = window_size
        if use_rel_pe:
            self.rel_pe = nn.Parameter(torch.zeros(1, 1, n_head, window_size))
            nn.init.trunc_normal_(self.rel_pe, std=(2.0 / n_embd) ** 0.5)
        else:
            self.register_parameter("rel_pe", None)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        q, k, v, out_mask = self._project(x, mask)
        batch, channels, length = q.shape
        # per-head channel-first views (B, H, D, T'): the banded product needs no transposes
        q, k, v = (t.view(batch, self.n_head, self.head_dim, length) for t in (q, k, v))
        dropout = self.attn_drop if (self.training and self.attn_drop.p > 0) else None
        kernel = LOCAL_ATTENTION_KERNELS[self.impl]
        out = kernel(q, k, v, out_mask, self.window_size, self.scale, self.rel_pe, dropout)
        out = out.reshape(batch, channels, length)  # (B, C, T')
        return self._output(out, out_mask), out_mask


class MaskedMHA(nn.Module):
    """Cross-attention: video positions (queries) attend to the valid text tokens (keys/values).

    ``text_side_projections`` (model key ``text_side_cross_attn``): when the text is short
    (``n_head * L < C``), the query and output projections are moved onto the text side, where
    they cost ``L`` columns instead of ``T``: per head, ``scores = x^T (W_q,h^T k_h) + b_q,h^T k_h``
    and ``out = sum_h (W_o,h v_h) probs_h^T + b_o``. The same function as the reference's
    (``softmax(q k^T) v`` then ``proj``) with the products associated differently, so the same
    numbers to float32 rounding at ``C / (n_head L)`` times fewer FLOPs (about 6x at C = 384,
    16 tokens).
    """

    def __init__(
        self, n_embd: int, n_head: int, attn_pdrop: float = 0.0, proj_pdrop: float = 0.0, use_sdpa: bool = True
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"embedding dim {n_embd} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.use_sdpa = use_sdpa
        self.key = nn.Conv1d(n_embd, n_embd, 1)
        self.query = nn.Conv1d(n_embd, n_embd, 1)
        self.value = nn.Conv1d(n_embd, n_embd, 1)
        self.attn_drop = nn.Dropout(attn_pdrop)
        self.proj_drop = nn.Dropout(proj_pdrop)
        self.proj = nn.Conv1d(n_embd, n_embd, 1)
        self.text_side_projections = True

    def forward(self, x: Tensor, x_mask: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """x ``(B, C, T)`` / x_mask ``(B, 1, T)``; context ``(B, C, L)`` / context_mask ``(B, 1, L)``.

        Returns ``(B, C, T)``, zero at invalid video positions.
        """
        if self.text_side_projections and self.n_head * context.shape[-1] < x.shape[1]:
            out = self._text_side_forward(x, context, context_mask)
            return out * x_mask.to(out.dtype)
        q = split_heads(self.query(x), self.n_head)  # (B, H, T, D)
        k = split_heads(self.key(context), self.n_head)  # (B, H, L, D)
        v = split_heads(self.value(context), self.n_head)
        dropout_p = self.attn_drop.p if self.training else 0.0
        out = masked_attention(q, k, v, context_mask, self.scale, dropout_p, self.use_sdpa)  # (B, H, T, D)
        out = self.proj_drop(self.proj(merge_heads(out)))  # (B, C, T)
        return out * x_mask.to(out.dtype)

    def _text_side_forward(self, x: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """The attention with the query and output projections applied to the text (see the
        class docstring); ``(B, C, T)`` before the video mask."""
        batch, channels, length = x.shape
        heads, head_dim, tokens = self.n_head, self.head_dim, context.shape[-1]
        key = self.key(context).view(batch, heads, head_dim, tokens)  # (B, H, D, L)
        value = self.value(context) * context_mask.to(x.dtype)  # (B, C, L), zero at invalid tokens
        w_query = self.query.weight[:, :, 0].view(heads, head_dim, channels)  # (H, D, C)
        w_proj = self.proj.weight[:, :, 0].view(channels, heads, head_dim).transpose(0, 1)  # (H, C, D)
        # score weights (B, C, H * L): column (h, l) = scale * W_q,h^T k_h[:, l]; their bias (B, H * L)
        score_weights = torch.matmul(w_query.transpose(1, 2), key * self.scale)  # (B, H, C, L)
        score_weights = score_weights.permute(0, 2, 1, 3).reshape(batch, channels, heads * tokens)
        score_bias = (self.query.bias.view(1, heads, head_dim, 1) * key * self.scale).sum(dim=2)  # (B, H, L)
        scores = torch.baddbmm(score_bias.view(batch, 1, heads * tokens), x.transpose(1, 2), score_weights)
        scores = scores.view(batch, length, heads, tokens)  # (B, T, H, L)
        scores = scores.masked_fill(~context_mask[:, :, None, :], float("-inf"))
        probs = F.softmax(scores, dim=-1)
        if self.training and self.attn_drop.p > 0:
            probs = self.attn_drop(probs)
        # output weights (B, C, H * L): column (h, l) = W_o,h v_h[:, l]
        value = value.view(batch, heads, head_dim, tokens)
        out_weights = torch.matmul(w_proj, value).permute(0, 2, 1, 3).reshape(batch, channels, heads * tokens)
        out = torch.baddbmm(self.proj.bias.view(1, channels, 1), out_weights,
                            probs.view(batch, length, heads * tokens).transpose(1, 2))  # (B, C, T)
        return self.proj_drop(out)
