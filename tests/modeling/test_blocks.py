"""Basic layers: masked convolution, LayerNorm, position table, drop path, transformer block."""
import math

import pytest
import torch

from libs.modeling.blocks import (
    AffineDropPath,
    LayerNorm,
    MaskedConv1D,
    Scale,
    downsample_mask,
    drop_path,
    sinusoid_table,
)
from libs.modeling.transformer import TransformerBlock


def test_downsample_mask_keeps_every_stride_th_entry():
    mask = torch.tensor([[[True] * 5 + [False] * 3]])  # valid count 5 of 8
    assert downsample_mask(mask, 2).tolist() == [[[True, True, True, False]]]  # ceil(5 / 2) = 3
    assert downsample_mask(mask, 4).tolist() == [[[True, True]]]  # ceil(5 / 4) = 2


def test_masked_conv_zeroes_invalid_outputs_but_reads_padded_input():
    conv = MaskedConv1D(1, 1, 3, bias=True)
    with torch.no_grad():
        conv.conv.weight.copy_(torch.tensor([[[1.0, 10.0, 100.0]]]))
        conv.conv.bias.fill_(0.5)
    x = torch.tensor([[[1.0, 2.0, 3.0, 7.0]]])  # the 7 is a padded column
    mask = torch.tensor([[[True, True, True, False]]])
    out, out_mask = conv(x, mask)
    # position 2 reads the padded column: 2 * 1 + 3 * 10 + 7 * 100 + 0.5
    assert out.tolist() == [[[1 * 10 + 2 * 100 + 0.5, 1 + 20 + 300 + 0.5, 2 + 30 + 700 + 0.5, 0.0]]]
    assert torch.equal(out_mask, mask)


def test_masked_conv_bias_initialised_to_zero_and_stride_checked():
    conv = MaskedConv1D(4, 4, 3, stride=2, groups=4, bias=True)
    assert torch.count_nonzero(conv.conv.bias) == 0
    out, mask = conv(torch.randn(2, 4, 8), torch.ones(2, 1, 8, dtype=torch.bool))
    assert out.shape == (2, 4, 4) and mask.shape == (2, 1, 4)
    with pytest.raises(ValueError):
        conv(torch.randn(1, 4, 7), torch.ones(1, 1, 7, dtype=torch.bool))


def test_layer_norm_matches_hand_computation_and_zero_column_gives_bias():
    norm = LayerNorm(2)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 3.0]).view(1, 2, 1))
        norm.bias.copy_(torch.tensor([0.5, -0.5]).view(1, 2, 1))
    x = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])  # column 0: (1, 3); column 1: zeros
    out = norm(x)
    # column 0: mean 2, biased variance 1 -> normalised (-1, 1) / sqrt(1 + 1e-5)
    scale = 1.0 / math.sqrt(1.0 + 1e-5)
    assert out[0, :, 0].tolist() == pytest.approx([-2.0 * scale + 0.5, 3.0 * scale - 0.5], abs=1e-6)
    assert out[0, :, 1].tolist() == [0.5, -0.5]


def test_sinusoid_table_values():
    table = sinusoid_table(5, 4)  # (1, 4, 5)
    assert table.shape == (1, 4, 5) and table.dtype == torch.float32
    p = 3.0
    expected = [math.sin(p), math.cos(p), math.sin(p / 100.0), math.cos(p / 100.0)]  # 10000^(2/4) = 100
    assert table[0, :, 3].tolist() == pytest.approx(expected, abs=1e-7)
    assert table[0, :, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_scale_and_drop_path():
    assert Scale(2.0)(torch.tensor([1.5])).item() == 3.0
    x = torch.ones(1000, 1, 1)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x
    torch.manual_seed(0)
    out = drop_path(x, 0.25, training=True)
    values = set(out.flatten().tolist())
    assert values <= {0.0, torch.tensor(1.0 / 0.75).item()}  # whole samples dropped or rescaled (float32)
    assert 0.15 < (out == 0).float().mean().item() < 0.35


def test_affine_drop_path_applies_layer_scale_when_probability_zero():
    module = AffineDropPath(3, drop_prob=0.0)
    assert module.scale.shape == (1, 3, 1) and torch.equal(module.scale, torch.full((1, 3, 1), 1e-4))
    module.train()
    x = torch.ones(2, 3, 4)
    assert torch.equal(module(x), module.scale * x)


def test_transformer_block_stride_two_output_and_masking():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, stride=2, window_size=3, cross_attention=True, path_pdrop=0.1).eval()
    x = torch.randn(2, 8, 16)
    mask = torch.arange(16)[None, None, :] < torch.tensor([16, 9])[:, None, None]
    text = torch.randn(2, 8, 5)
    text_mask = torch.arange(5)[None, None, :] < torch.tensor([5, 2])[:, None, None]
    out, out_mask = block(x, mask, text, text_mask)
    assert out.shape == (2, 8, 8)
    assert out_mask[1, 0].tolist() == [True] * 5 + [False] * 3  # ceil(9 / 2) = 5 valid
    assert torch.count_nonzero(out[1, :, 5:]) == 0
    names = [n for n, _ in block.named_parameters()]
    assert names.index("ln3.weight") > names.index("cross_attn.proj.bias") > names.index("attn.proj.bias")
    assert names[-2:] == ["drop_path_attn.scale", "drop_path_mlp.scale"]


def test_transformer_block_without_drop_path_has_no_scale_parameters():
    block = TransformerBlock(8, 2)
    assert not any("drop_path" in n for n, _ in block.named_parameters())
