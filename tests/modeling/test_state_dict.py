"""The state_dict of the full-size models equals the reference's (names, shapes, order, counts)."""
import json

import pytest
import torch

from libs.modeling import make_meta_arch
from conftest import fixture_path

FINETUNE_MODEL = dict(
    backbone_type="convTransformer",
    fpn_type="identity",
    backbone_arch=[2, 4, 4, 0, 6],
    scale_factor=2,
    input_vid_dim=2304,
    input_txt_dim=512,
    max_seq_len=2560,
    max_buffer_len_factor=4.0,
    n_head=4,
    n_mha_win_size=9,
    embd_kernel_size=3,
    embd_dim=384,
    embd_with_ln=True,
    fpn_dim=384,
    fpn_with_ln=True,
    fpn_start_level=0,
    head_dim=384,
    regression_range=[[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 128], [64, 10000]],
    head_num_layers=3,
    head_kernel_size=3,
    head_with_ln=True,
    use_abs_pe=True,
    use_rel_pe=False,
    num_classes=1,
    train_cfg={"init_loss_norm": 200, "droppath": 0.1, "cls_prior_prob": 0.01},
)


def build_on_meta(**overrides):
    with torch.device("meta"):
        return make_meta_arch("LocPointTransformer", **{**FINETUNE_MODEL, **overrides})


def read_tsv(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or line.startswith("key\t"):
                continue
            key, shape, dtype = line.rstrip("\n").split("\t")
            rows.append((key, tuple(json.loads(shape)), dtype))
    return rows


def test_groundnlq_state_dict_equals_reference_table():
    rows = read_tsv(fixture_path("reference_state_dict.tsv"))
    state = build_on_meta().state_dict()
    ours = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()]
    assert ours == rows
    assert len(ours) == 467
    assert sum(v.numel() for v in state.values()) == 32_527_498


def test_groundnlq_star_state_dict_counts_and_extra_keys():
    base = build_on_meta().state_dict()
    star = build_on_meta(backbone_arch=[2, 4, 4, 6, 0]).state_dict()
    assert len(star) == 527
    assert sum(v.numel() for v in star.values()) == 36_080_266
    extra = set(star) - set(base)
    assert set(base) <= set(star)
    assert len(extra) == 60 and all(k.startswith("backbone.branch.") for k in extra)
    assert all(".cross_attn." in k or ".ln3." in k for k in extra)


def test_no_persistent_buffers_and_parameters_are_float32():
    model = build_on_meta()
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()}
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_initialisation_prior_bias_and_zero_backbone_biases():
    torch.manual_seed(0)
    model = make_meta_arch(
        "LocPointTransformer",
        **{**FINETUNE_MODEL, "embd_dim": 16, "fpn_dim": 16, "head_dim": 16, "input_vid_dim": 8, "input_txt_dim": 8},
    )
    assert model.cls_head.cls_head.conv.bias.item() == pytest.approx(-4.59512, abs=1e-5)
    assert torch.count_nonzero(model.reg_head.offset_head.conv.bias) == 0
    backbone_biases = [p for n, p in model.backbone.named_parameters() if n.endswith(".bias") and "norm" not in n
                       and ".ln" not in n]
    assert backbone_biases and all(torch.count_nonzero(b) == 0 for b in backbone_biases)
    assert all(s.scale.item() == 1.0 for s in model.reg_head.scale)
