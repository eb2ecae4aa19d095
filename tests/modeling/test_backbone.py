"""Backbone, neck, points and the padding rule: which padded lengths reproduce max_seq_len outputs."""
import pytest
import torch

from libs.core.errors import DataError
from libs.datasets.collate import Batch, pad_sequences, video_padded_length
from libs.modeling import make_meta_arch
from libs.modeling.blocks import AffineDropPath, LayerNorm
from libs.modeling.loc_generators import PointGenerator

MAX_SEQ_LEN = 128
SMALL = dict(
    backbone_arch=[2, 1, 2, 0, 3], scale_factor=2, input_vid_dim=6, input_txt_dim=5, max_seq_len=MAX_SEQ_LEN,
    n_head=2, n_mha_win_size=9, embd_dim=8, fpn_dim=8, head_dim=8, use_abs_pe=True,
    regression_range=[[0, 4], [2, 8], [4, 16], [8, 10000]], train_cfg={"droppath": 0.1},
)


def small_model(seed=0):
    """A 4-level model whose LayerNorm biases are non-zero, so padded columns matter (as in trained weights)."""
    torch.manual_seed(seed)
    model = make_meta_arch("LocPointTransformer", **SMALL).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LayerNorm):
                module.bias.normal_(0.0, 0.5)
            if isinstance(module, AffineDropPath):
                module.scale.uniform_(0.5, 1.5)
    return model


def batch_at(video, text, length):
    """A one-query Batch with the video padded to ``length``; text padded by one column."""
    videos, video_masks = pad_sequences([video], length)
    texts, text_masks = pad_sequences([text], text.shape[-1] + 1)
    return Batch(videos, video_masks, texts, text_masks, torch.zeros(1, dtype=torch.int64), None, None,
                 [{"video_id": "v", "query_id": "q"}])


def valid_heads(model, batch):
    with torch.no_grad():
        out = model.forward_heads(batch)
    return [(c[m], o[m]) for c, o, m in zip(out.cls_logits, out.offsets, out.fpn_masks)]


def max_diff(a, b):
    return max(max((x - y).abs().max().item(), (u - v).abs().max().item()) for (x, u), (y, v) in zip(a, b))


def test_levels_shapes_and_masks():
    model = small_model()
    torch.manual_seed(1)
    video, text = torch.randn(6, 37), torch.randn(5, 4)
    model.trim_pyramid = False
    out = model.forward_heads(batch_at(video, text, 48))
    assert [m.shape[1] for m in out.fpn_masks] == [48, 24, 12, 6]  # T / 2^l
    assert [int(m.sum()) for m in out.fpn_masks] == [37, 19, 10, 5]  # ceil(37 / 2^l)
    assert [c.shape for c in out.cls_logits][3] == (1, 6, 1)
    model.trim_pyramid = True  # each level: its valid length plus one padded column
    trimmed = model.forward_heads(batch_at(video, text, 48))
    assert [m.shape[1] for m in trimmed.fpn_masks] == [38, 20, 11, 6]
    assert [int(m.sum()) for m in trimmed.fpn_masks] == [37, 19, 10, 5]
    assert [o.shape for o in out.offsets][0] == (1, 48, 2)
    assert all((o >= 0).all() for o in out.offsets)
    assert model.pad_multiple == 8


@pytest.mark.parametrize("num_feats", [1, 7, 8, 50, 117, 120, 121, 128])
def test_exact_padding_reproduces_max_seq_len_outputs(num_feats):
    """Any multiple of the largest stride with T >= L + 8 gives the T = max_seq_len outputs."""
    model = small_model()
    torch.manual_seed(num_feats)
    video, text = torch.randn(6, num_feats), torch.randn(5, 3)
    reference = valid_heads(model, batch_at(video, text, MAX_SEQ_LEN))
    exact = video_padded_length(num_feats, MAX_SEQ_LEN, 8, "exact")
    assert exact == min(MAX_SEQ_LEN, -(-(num_feats + 8) // 8) * 8)
    for length in range(exact, MAX_SEQ_LEN + 1, 8):
        assert max_diff(valid_heads(model, batch_at(video, text, length)), reference) < 1e-5


@pytest.mark.parametrize("num_feats", [7, 8, 50, 64, 117])
def test_one_stride_less_padding_changes_outputs(num_feats):
    """T = roundup(L + 8, 8) is the smallest safe length: 8 fewer leaves the top level without a
    padded column, and its last valid outputs change."""
    model = small_model()
    torch.manual_seed(num_feats)
    video, text = torch.randn(6, num_feats), torch.randn(5, 3)
    reference = valid_heads(model, batch_at(video, text, MAX_SEQ_LEN))
    too_short = video_padded_length(num_feats, MAX_SEQ_LEN, 8, "exact") - 8
    assert max_diff(valid_heads(model, batch_at(video, text, too_short)), reference) > 1e-3


def test_text_padding_one_or_many_columns_is_the_same_none_differs():
    model = small_model()
    torch.manual_seed(3)
    video, text = torch.randn(6, 30), torch.randn(5, 4)

    def heads(text_len):
        videos, video_masks = pad_sequences([video], 40)
        texts, text_masks = pad_sequences([text], text_len)
        batch = Batch(videos, video_masks, texts, text_masks, torch.zeros(1, dtype=torch.int64), None, None, [{}])
        return valid_heads(model, batch)

    assert max_diff(heads(5), heads(17)) < 1e-5
    assert max_diff(heads(4), heads(5)) > 1e-3


def test_position_table_slices_in_training_and_resamples_long_clips_in_eval():
    model = small_model()
    backbone = model.backbone
    assert torch.equal(backbone.position_table(MAX_SEQ_LEN), backbone.pos_embd)
    assert torch.equal(backbone.position_table(40), backbone.pos_embd[:, :, :40])
    table = backbone.pos_embd[0]
    stretched = backbone.position_table(2 * MAX_SEQ_LEN)[0]  # source position i / 2 - 0.25
    assert torch.allclose(stretched[:, 1], 0.75 * table[:, 0] + 0.25 * table[:, 1], atol=1e-7)
    assert torch.allclose(stretched[:, 0], table[:, 0])  # clamped at the border
    backbone.train()
    with pytest.raises(DataError, match="max_seq_len"):
        backbone.position_table(MAX_SEQ_LEN + 8)


def test_point_generator_rows():
    gen = PointGenerator(1000, [1, 2, 4], [[0, 4], [2, 8], [4, 10000]])
    points = gen([torch.zeros(1, 3, 8), torch.zeros(1, 3, 4), torch.zeros(1, 3, 2)])
    assert points[1].tolist() == [[0, 2, 8, 2], [2, 2, 8, 2], [4, 2, 8, 2], [6, 2, 8, 2]]
    assert points[2].tolist() == [[0, 4, 10000, 4], [4, 4, 10000, 4]]
    assert all(p.dtype == torch.float32 for p in points)
