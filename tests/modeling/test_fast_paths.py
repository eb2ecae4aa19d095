"""The fast paths equal the explicit ones: fused SDPA, banded local attention (linear memory),
autocast; and the full-size finetune model runs forward + backward at T = 2560."""
import pytest
import torch

from libs.modeling import make_meta_arch
from libs.modeling.attention import LocalMaskedMHCA

SMALL = dict(
    backbone_arch=[2, 2, 2, 2, 1], input_vid_dim=6, input_txt_dim=5, max_seq_len=64, n_head=2,
    n_mha_win_size=9, embd_dim=8, fpn_dim=8, head_dim=8, use_abs_pe=True,
    regression_range=[[0, 4], [2, 8], [4, 16], [8, 10000]], train_cfg={"droppath": 0.0},
)


def items(num=3):
    torch.manual_seed(5)
    out = []
    for i, (length, tokens) in enumerate([(40, 4), (25, 7), (33, 2)][:num]):
        out.append({
            "video_id": f"v{i}", "feats": torch.randn(6, length), "fps": 30, "duration": length * 0.5,
            "feat_stride": 16.043, "feat_num_frames": 16.043,
            "segments": torch.tensor([[3.0, 11.5]], dtype=torch.float64),
            "one_hot_labels": torch.ones(1, 1, dtype=torch.int64), "query_id": f"q{i}", "query": "",
            "query_feats": torch.randn(5, tokens),
        })
    return out


def test_sdpa_and_explicit_softmax_give_the_same_model_outputs():
    torch.manual_seed(0)
    fused = make_meta_arch("LocPointTransformer", **SMALL, use_sdpa=True).eval()
    explicit = make_meta_arch("LocPointTransformer", **SMALL, use_sdpa=False).eval()
    explicit.load_state_dict(fused.state_dict())
    with torch.no_grad():
        a = fused.forward_heads(fused.prepare_batch(items()))
        b = explicit.forward_heads(explicit.prepare_batch(items()))
    for x, y in zip(a.cls_logits + a.offsets, b.cls_logits + b.offsets):
        assert torch.allclose(x, y, atol=1e-5)


def test_banded_attention_memory_is_linear_in_length():
    """T = 65536 would need a 32 GiB score matrix if attention were dense; banded it is a few MB."""
    torch.manual_seed(0)
    layer = LocalMaskedMHCA(4, 2, window_size=9).eval()
    length = 65536
    x = torch.randn(1, 4, length)
    mask = torch.ones(1, 1, length, dtype=torch.bool)
    mask[..., length - 100:] = False
    with torch.no_grad():
        out, out_mask = layer(x, mask)
    assert out.shape == (1, 4, length) and torch.isfinite(out).all()
    assert torch.count_nonzero(out[..., length - 100:]) == 0


@pytest.mark.parametrize("training", [False, True])
def test_bfloat16_autocast_runs_and_stays_close(training):
    torch.manual_seed(0)
    model = make_meta_arch("LocPointTransformer", **SMALL).train(training)
    if training:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(items())
        losses["final_loss"].backward()
        assert torch.isfinite(losses["final_loss"]) and losses["final_loss"].dtype == torch.float32
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        return
    with torch.no_grad():
        full = model.forward_heads(model.prepare_batch(items()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_heads(model.prepare_batch(items()))
            results = model(items())
    for x, y in zip(full.cls_logits, low.cls_logits):
        assert (x - y.float()).abs().max() < 0.1
    assert len(results) == 3 and all(torch.isfinite(r["scores"]).all() for r in results)


def test_full_finetune_model_forward_backward_at_max_length():
    """The shipped GroundNLQ size (32.5 M parameters) at T = 2560, batch 1 (~15 s on one thread)."""
    torch.manual_seed(0)
    model = make_meta_arch(
        "LocPointTransformer",
        backbone_arch=[2, 4, 4, 0, 6], embd_dim=384, fpn_dim=384, head_dim=384, input_vid_dim=2304,
        input_txt_dim=512, n_mha_win_size=9, n_head=4, use_abs_pe=True, max_seq_len=2560,
        regression_range=[[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 128], [64, 10000]],
        train_cfg={"init_loss_norm": 200, "label_smoothing": 0.1},
    ).train()
    item = {
        "video_id": "long", "feats": torch.randn(2304, 2560), "fps": 30, "duration": 1369.0,
        "feat_stride": 16.043, "feat_num_frames": 16.043,
        "segments": torch.tensor([[100.0, 140.0]], dtype=torch.float64),
        "one_hot_labels": torch.ones(1, 1, dtype=torch.int64), "query_id": "q", "query": "",
        "query_feats": torch.randn(512, 12),
    }
    batch = model.prepare_batch([item])
    assert batch.videos.shape[-1] == 2560
    losses = model(batch)
    losses["final_loss"].backward()
    assert torch.isfinite(losses["final_loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
