"""Attention layers against explicit dense computations of the reference's masking rules."""
import math

import pytest
import torch
import torch.nn.functional as F

from libs.modeling.attention import (
    LocalMaskedMHCA,
    MaskedMHA,
    MaskedMHCA,
    banded_attention,
    masked_attention,
)


def dense_local_attention(q, k, v, mask, window, scale):
    """Reference semantics with a full T x T matrix: out-of-band -inf, invalid keys -1e4 additive,
    rows of invalid queries zeroed. q / k / v (B, H, D, T)."""
    length = q.shape[-1]
    scores = torch.einsum("bhdi,bhdj->bhij", q * scale, k)  # (B, H, T, T)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    scores = scores.masked_fill((i - j).abs() > window // 2, float("-inf"))
    scores = scores + (~mask[:, :, None, :]).to(scores.dtype) * -1e4
    probs = scores.softmax(-1).masked_fill(~mask[:, :, :, None], 0.0)  # (B, H, T, T)
    return torch.einsum("bhij,bhdj->bhdi", probs, v)


def lengths_mask(lengths, total):
    return torch.arange(total)[None, None, :] < torch.tensor(lengths)[:, None, None]


@pytest.mark.parametrize("length,window", [(16, 9), (13, 9), (5, 9), (1, 3), (24, 5)])
def test_banded_equals_dense_local_attention(length, window):
    torch.manual_seed(length)
    q, k, v = (torch.randn(3, 2, 4, length, dtype=torch.float64) for _ in range(3))
    mask = lengths_mask([length, max(1, length - 4), 1], length)
    got = banded_attention(q, k, v, mask, window, 0.5)
    want = dense_local_attention(q, k, v, mask, window, 0.5)
    assert torch.allclose(got, want, atol=1e-12)


def test_banded_attention_gradients_equal_dense():
    torch.manual_seed(1)
    inputs = [torch.randn(2, 2, 3, 11, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = lengths_mask([11, 6], 11)
    grads_banded = torch.autograd.grad(banded_attention(*inputs, mask, 9, 0.3).square().sum(), inputs)
    grads_dense = torch.autograd.grad(dense_local_attention(*inputs, mask, 9, 0.3).square().sum(), inputs)
    for a, b in zip(grads_banded, grads_dense):
        assert torch.allclose(a, b, atol=1e-12)


def test_invalid_key_in_window_gets_zero_weight_not_minus_inf_row():
    # one valid query next to invalid keys: its output is exactly its own value
    q = torch.randn(1, 1, 2, 4)
    v = torch.randn(1, 1, 2, 4)
    mask = lengths_mask([1], 4)
    out = banded_attention(q, torch.randn(1, 1, 2, 4), v, mask, 3, 1.0)
    assert torch.allclose(out[..., 0], v[..., 0])
    assert torch.count_nonzero(out[..., 1:]) == 0


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_masked_attention_matches_hand_softmax(use_sdpa):
    q = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]]])  # third key invalid
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]]])
    key_mask = torch.tensor([[[True, True, False]]])
    out = masked_attention(q, k, v, key_mask, scale=1.0, use_sdpa=use_sdpa)
    w = math.exp(1.0) / (math.exp(1.0) + 1.0)
    assert out.flatten().tolist() == pytest.approx([w * 1 + (1 - w) * 3, w * 2 + (1 - w) * 4], abs=1e-6)


def test_sdpa_switch_equals_explicit_softmax_for_global_and_cross_attention():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 10)
    mask = lengths_mask([10, 6], 10)
    text = torch.randn(2, 16, 7)
    text_mask = lengths_mask([7, 3], 7)
    glob = MaskedMHCA(16, 4, use_sdpa=True).eval()
    out_fused, _ = glob(x, mask)
    glob.use_sdpa = False
    out_explicit, _ = glob(x, mask)
    assert torch.allclose(out_fused, out_explicit, atol=1e-6)

    cross = MaskedMHA(16, 4, use_sdpa=True).eval()
    fused = cross(x, mask, text, text_mask)
    cross.use_sdpa = False
    explicit = cross(x, mask, text, text_mask)
    assert torch.allclose(fused, explicit, atol=1e-6)
    assert torch.count_nonzero(fused[1, :, 6:]) == 0


def test_local_mhca_equals_global_mhca_when_window_covers_everything():
    """With a window wider than the sequence, local attention is global attention (same weights)."""
    torch.manual_seed(2)
    local = LocalMaskedMHCA(8, 2, window_size=31).eval()
    glob = MaskedMHCA(8, 2, use_sdpa=False).eval()
    glob.load_state_dict(local.state_dict())
    x = torch.randn(2, 8, 12)
    mask = lengths_mask([12, 7], 12)
    assert torch.allclose(local(x, mask)[0], glob(x, mask)[0], atol=1e-6)


def test_local_mhca_stride_two_halves_length():
    layer = LocalMaskedMHCA(8, 2, window_size=9, stride=2).eval()
    out, mask = layer(torch.randn(1, 8, 16), lengths_mask([11], 16))
    assert out.shape == (1, 8, 8) and mask.sum().item() == 6
    assert layer.query_conv.conv.weight.shape == (8, 1, 3)


def test_cross_attention_ignores_padded_text_columns():
    torch.manual_seed(3)
    cross = MaskedMHA(8, 2).eval()
    x = torch.randn(1, 8, 5)
    mask = lengths_mask([5], 5)
    text = torch.randn(1, 8, 3)
    padded = F.pad(text, (0, 4), value=7.0)  # junk in padded columns
    a = cross(x, mask, text, lengths_mask([3], 3))
    b = cross(x, mask, padded, lengths_mask([3], 7))
    assert torch.allclose(a, b, atol=1e-6)
