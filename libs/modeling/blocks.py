"""Basic layers of the GroundNLQ network: masked convolution, channel-first LayerNorm, position
table, scalar scale and drop path (the attention layers build on them; ``transformer.py`` joins both).

Every temporal layer takes and returns ``(x, mask)`` with ``x`` channel-first ``(B, C, T)`` and
``mask`` bool ``(B, 1, T)`` (True = valid), so padding is explicit everywhere. Parameter names and
registration order match the reference, so its checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .fused_layer_norm import channel_layer_norm, reference_layer_norm

Tensor = torch.Tensor


def downsample_mask(mask: Tensor, stride: int) -> Tensor:
    """Nearest-neighbour downsampling of a ``(B, 1, T)`` mask: ``out[i] = mask[stride * i]``.

    Equals the reference's ``F.interpolate(mask, size=T // stride, mode='nearest')``; the valid
    count becomes ``ceil(n / stride)``.
    """
    if stride == 1:
        return mask
    return mask[:, :, ::stride]


class MaskedConv1D(nn.Module):
    """``nn.Conv1d`` (held as ``conv``) whose output is zeroed at invalid positions.

    The convolution itself reads the unmasked input, including padded columns (reference
    behaviour that makes outputs depend on whether a padded column exists, spec 5.6).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: Optional[int] = None,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1D needs an odd kernel size, got {kernel_size}")
        if padding is None:
            padding = kernel_size // 2
        if padding != kernel_size // 2:
            raise ValueError(f"MaskedConv1D needs padding = kernel_size // 2, got {padding}")
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor]:
        if x.shape[-1] % self.stride != 0:
            raise ValueError(f"sequence length {x.shape[-1]} is not a multiple of the stride {self.stride}")
        out_mask = downsample_mask(mask, self.stride)  # (B, 1, T // stride)
        out = self.conv(x)
        out = out * out_mask.to(out.dtype)  # (B, C_out, T // stride)
        return out, out_mask


class LayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, T)`` tensor (biased variance, eps 1e-5).

    Computed in float32 even under autocast, because low-precision statistics drift. A zero
    column normalises to ``bias``: padded columns are therefore not zero after it. ``fused``
    (model key ``fused_layer_norm``): the one-pass kernel of ``fused_layer_norm.py`` where it
    applies; False runs the reference's eight elementwise passes (reference mode).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.fused = True
        self.weight = nn.Parameter(torch.ones(1, num_channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_channels:
            raise ValueError(f"LayerNorm({self.num_channels}) expects (B, {self.num_channels}, T), got {tuple(x.shape)}")
        low_precision = x.dtype in (torch.float16, torch.bfloat16)
        stats_input = x.float() if low_precision else x
        norm = channel_layer_norm if self.fused else reference_layer_norm
        out = norm(stats_input, self.weight, self.bias, self.eps)
        return out.to(x.dtype) if low_precision else out


# columns per matrix product of the chunked MLP: the (4C, 256) hidden (1.5 MiB at C = 384) stays
# in cache between the two products and GELU; alone 1.47x faster than two full-width 1x1
# convolutions on a 2-core CPU (165 against 243 ms at 11 x 384 x 901), 128 and 512 within 10%
MLP_CHUNK = 256


def chunked_mlp(x: Tensor, fc1: nn.Conv1d, fc2: nn.Conv1d, chunk: int = MLP_CHUNK) -> Tensor:
    """``fc2(gelu(fc1(x)))`` for 1x1 convolutions, as two matrix products per clip row and per
    ``chunk`` columns, so that the wide hidden layer never leaves the cache.

    The reference runs each convolution over the whole ``(B, 4C, T)`` hidden tensor, which is
    written to memory and read back twice (GELU, second convolution). Same numbers to
    summation order (GEMM blocking); autograd runs through it. x ``(B, C, T)`` -> ``(B, C', T)``.
    """
    w1, b1 = fc1.weight[:, :, 0], fc1.bias[:, None]  # (4C, C), (4C, 1)
    w2, b2 = fc2.weight[:, :, 0], fc2.bias[:, None]
    batch, _, length = x.shape
    out: Optional[Tensor] = None
    for row in range(batch):
        for start in range(0, length, chunk):
            columns = slice(start, start + chunk)
            hidden = F.gelu(torch.addmm(b1, w1, x[row, :, columns]))  # (4C, chunk)
            part = torch.addmm(b2, w2, hidden)  # (C', chunk)
            if out is None:  # the products' dtype (autocast may lower it)
                out = part.new_empty(batch, w2.shape[0], length)
            out[row, :, columns] = part
    if out is None:  # an empty batch or sequence
        return fc2(F.gelu(fc1(x)))
    return out


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """Sinusoid position table ``(1, dim, num_positions)`` float32.

    Channel ``j`` at position ``p``: angle ``p / 10000^(2 floor(j/2) / dim)``, sin for even ``j``,
    cos for odd ``j``; computed in float64 then rounded, as the reference does with NumPy.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (P, 1)
    channel = torch.arange(dim, dtype=torch.float64)
    inv_freq = 1.0 / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2.0 * torch.div(channel, 2, rounding_mode="floor") / dim)
    angle = position * inv_freq[None, :]  # (P, C)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32).t().unsqueeze(0).contiguous()  # (1, C, P)


class Scale(nn.Module):
    """A learnable scalar ``scale`` (init 1) multiplying its input (per-level regression scale)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init_value, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth per sample: drop whole samples with probability ``drop_prob``, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    keep = torch.floor(keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device))  # (B, 1, 1)
    return x.div(keep_prob) * keep


class AffineDropPath(nn.Module):
    """LayerScale (per-channel ``scale``, init 1e-4) followed by drop path.

    ``drop_prob`` may be changed after construction (the golden fixtures set it to 0).
    """

    def __init__(self, num_dim: int, drop_prob: float = 0.0, init_scale_value: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(init_scale_value * torch.ones(1, num_dim, 1))
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(self.scale * x, self.drop_prob, self.training)
