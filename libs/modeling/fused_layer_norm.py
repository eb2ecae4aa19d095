"""Channel LayerNorm of ``(B, C, T)`` features in one pass: the compiled kernel and its fallback.

Why: the model is channel-first, where torch has no fused LayerNorm; the reference's formula
costs eight elementwise passes over the tensor, about 13% of fast inference on a 2-core CPU
(bench/RESULTS.md). ``csrc/layer_norm_cpu.cpp`` (the optional extension
``libs.modeling._layer_norm_cpu``) does it in one read and one write, forward and backward, with
the same per-element operations and channel sums in double (outputs within an ulp or two of the
reference's formula; the golden tolerances hold).

:func:`channel_layer_norm` uses the kernel for contiguous float32 CPU tensors when it is built
and falls back to the reference's formula otherwise (other devices and dtypes, a missing build):
same numbers to rounding either way.
"""
from __future__ import annotations

import torch

try:  # optional, like the NMS extension: a machine without a compiler still runs
    from libs.modeling import _layer_norm_cpu  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _layer_norm_cpu = None

Tensor = torch.Tensor


def kernel_available() -> bool:
    """Whether the compiled kernel was built (``pip install -e . --no-build-isolation``)."""
    return _layer_norm_cpu is not None


def reference_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """The reference's formula over dim 1: ``(x - mean) / sqrt(var + eps) * w + b``, biased variance."""
    centred = x - x.mean(dim=1, keepdim=True)
    variance = (centred * centred).mean(dim=1, keepdim=True)
    return centred / torch.sqrt(variance + eps) * weight + bias


class _FusedChannelLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        out, mean, denom = _layer_norm_cpu.forward(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, denom)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, mean, denom = ctx.saved_tensors
        dx, dweight, dbias = _layer_norm_cpu.backward(grad_out.contiguous(), x, weight, mean, denom)
        return dx, dweight.view(weight.shape), dbias.view(weight.shape), None


def _kernel_applies(x: Tensor, weight: Tensor) -> bool:
    return (  # under torch.compile the formula is traced instead (inductor fuses it itself)
        _layer_norm_cpu is not None
        and not torch.compiler.is_compiling()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.is_contiguous()
        and x.shape[-1] > 0
    )


def channel_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the channels of ``x`` ``(B, C, T)``; ``weight`` / ``bias`` ``(1, C, 1)``."""
    if _kernel_applies(x, weight):
        return _FusedChannelLayerNorm.apply(x, weight, bias.contiguous(), eps)
    return reference_layer_norm(x, weight, bias, eps)
