"""The fast paths equal the explicit ones: fused SDPA, the three local-attention kernels (the
reference's overlapping chunks, shifted products, block GEMMs), trimmed pyramid levels,
video-centric batches (train and eval; first stem self-attention once per clip), NMS early stop,
torch.compile, autocast; and the full-size finetune model runs forward + backward at T = 2560."""
import copy

import pytest
import torch
import yaml

from libs.core.config import mode_path
from libs.core.errors import ConfigError
from libs.modeling import make_meta_arch
from libs.modeling.attention import (
    LocalMaskedMHCA,
    banded_attention,
    blocked_local_attention,
    chunked_local_attention,
)
from libs.modeling.backbones import pyramid_lengths
from libs.modeling.transformer import TransformerBlock
from libs.modeling.heads import RegHead
from tests.golden import assert_close, assert_same_results, batch_for

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
        a = fused.forward_heads(batch_for(fused, items()))
        b = explicit.forward_heads(batch_for(explicit, items()))
    assert_same_heads(a, b)


def assert_same_heads(a, b, valid_only=False):
    """Two runs' cls logits and offsets within the float32 tolerances of tests/golden.py; with
    ``valid_only``, at the valid positions of ``a`` (``b`` may be longer: its extra columns are
    padding)."""
    for quantity in ("cls_logits", "offsets"):
        for level, (x, y) in enumerate(zip(getattr(a, quantity), getattr(b, quantity))):
            mask = a.fpn_masks[level] if valid_only else None
            assert_close(x, y[:, :x.shape[1]], quantity, mask, where=f" level {level}")


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
        full = model.forward_heads(batch_for(model, items()))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.forward_heads(batch_for(model, items()))
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
    batch = batch_for(model, [item])
    assert batch.videos.shape[-1] == 2560
    losses = model(batch)
    losses["final_loss"].backward()
    assert torch.isfinite(losses["final_loss"])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------- blocked local attention
def _shifted_and_blocked(length, valid, window, block_size, dtype=torch.float64):
    torch.manual_seed(length * 31 + window)
    q, k, v = (torch.randn(3, 2, 4, length, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.arange(length)[None, None, :] < torch.tensor([length, valid, 1])[:, None, None]
    rel_pe = torch.randn(1, 1, 2, window, dtype=dtype)
    shifted = banded_attention(q, k, v, mask, window, 0.5, rel_pe)
    blocked = blocked_local_attention(q, k, v, mask, window, 0.5, rel_pe, block_size=block_size)
    return (q, k, v), shifted, blocked


@pytest.mark.parametrize("length,valid,window,block_size", [
    (16, 16, 9, 4), (13, 9, 9, 4), (5, 3, 9, 64), (1, 1, 3, 4), (24, 20, 5, 7), (130, 100, 9, 32),
])
def test_blocked_local_attention_equals_shifted_products_with_gradients(length, valid, window, block_size):
    """Block GEMMs with -inf outside the band give the banded result (float64: to 1e-12), and
    finite gradients although the last block has query rows past T."""
    inputs, shifted, blocked = _shifted_and_blocked(length, valid, window, block_size)
    assert torch.allclose(blocked, shifted, atol=1e-12)
    grads_shifted = torch.autograd.grad(shifted.square().sum(), inputs)
    grads_blocked = torch.autograd.grad(blocked.square().sum(), inputs)
    for a, b in zip(grads_shifted, grads_blocked):
        assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("length,valid,window", [
    (16, 16, 9), (13, 9, 9), (5, 3, 9), (1, 1, 3), (24, 20, 5), (40, 33, 9), (130, 100, 9), (7, 7, 3),
])
def test_chunked_local_attention_equals_shifted_products_with_gradients(length, valid, window):
    """The reference's overlapping-chunk algorithm (lengths not a multiple of the chunk padded
    internally) gives the banded result and gradients in float64 to 1e-12."""
    torch.manual_seed(length * 7 + window)
    inputs = [torch.randn(3, 2, 4, length, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = torch.arange(length)[None, None, :] < torch.tensor([length, valid, 1])[:, None, None]
    rel_pe = torch.randn(1, 1, 2, window, dtype=torch.float64)
    shifted = banded_attention(*inputs, mask, window, 0.5, rel_pe)
    chunked = chunked_local_attention(*inputs, mask, window, 0.5, rel_pe)
    assert torch.allclose(chunked, shifted, atol=1e-12)
    grads_shifted = torch.autograd.grad(shifted.square().sum(), inputs)
    grads_chunked = torch.autograd.grad(chunked.square().sum(), inputs)
    for a, b in zip(grads_shifted, grads_chunked):
        assert torch.isfinite(b).all() and torch.allclose(a, b, atol=1e-12)


def test_chunked_attention_gives_invalid_keys_zero_weight():
    """A valid query beside invalid keys (-1e4) attends only to itself: output = its own value."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 1, 2, 8) for _ in range(3))
    mask = torch.zeros(1, 1, 8, dtype=torch.bool)
    mask[..., 3] = True
    out = chunked_local_attention(q, k, v, mask, 9, 1.0)
    assert torch.allclose(out[..., 3], v[..., 3]) and torch.count_nonzero(out[..., [0, 1, 2, 4, 5, 6, 7]]) == 0


@pytest.mark.parametrize("impl", ["banded", "chunked"])
def test_local_attention_impls_give_the_same_model_outputs_in_float32(impl):
    """Every kernel choice keeps the state dict and the outputs (valid positions)."""
    torch.manual_seed(0)
    blocked = make_meta_arch("LocPointTransformer", **SMALL, local_attn_impl="blocked").eval()
    other = make_meta_arch("LocPointTransformer", **SMALL, local_attn_impl=impl).eval()
    other.load_state_dict(blocked.state_dict())
    assert list(blocked.state_dict()) == list(other.state_dict())
    assert {m.impl for m in other.modules() if isinstance(m, LocalMaskedMHCA)} == {impl}
    with torch.no_grad():
        a = blocked.forward_heads(batch_for(blocked, items()))
        b = other.forward_heads(batch_for(other, items()))
    assert_same_heads(a, b, valid_only=True)


def test_kernel_and_trim_switches_are_validated():
    with pytest.raises(ConfigError, match="model.local_attn_impl"):
        make_meta_arch("LocPointTransformer", **SMALL, local_attn_impl="dense")
    with pytest.raises(ConfigError, match="model.trim_pyramid"):
        make_meta_arch("LocPointTransformer", **SMALL, trim_pyramid="no")


# ---------------------------------------------------------------- trimmed pyramid levels
def test_pyramid_lengths_are_the_valid_length_plus_one_column():
    # 900 features padded to 1024: ceil(900 / 2^l) + 1 per level
    assert pyramid_lengths(900, 1024, 7, 2) == [901, 451, 226, 114, 58, 30, 16]
    # 2540 features at 2560: levels 5 and 6 have no padded column at 2560 either (capped at T / s_l)
    assert pyramid_lengths(2540, 2560, 7, 2) == [2541, 1271, 636, 319, 160, 80, 40]
    assert pyramid_lengths(1, 8, 4, 2) == [2, 2, 2, 1]


def _model_pair(first, second):
    """Two SMALL models with switches ``first`` / ``second`` and the same weights, LayerScale and
    LayerNorm biases drawn away from their init so that padded columns reach the outputs."""
    torch.manual_seed(0)
    a = make_meta_arch("LocPointTransformer", **SMALL, **first)
    b = make_meta_arch("LocPointTransformer", **SMALL, **second)
    with torch.no_grad():
        for name, param in a.named_parameters():
            if name.endswith("scale") or (name.endswith("bias") and param.dim() == 3):
                param.uniform_(0.5, 1.5)
    b.load_state_dict(a.state_dict())
    return a, b


def _assert_same_losses_and_gradients(model_a, losses_a, model_b, losses_b):
    for key in ("cls_loss", "reg_loss", "final_loss"):
        assert_close(losses_a[key], losses_b[key], "losses", where=f" {key}")
    grads_a = torch.autograd.grad(losses_a["final_loss"], list(model_a.parameters()))
    grads_b = torch.autograd.grad(losses_b["final_loss"], list(model_b.parameters()))
    for (name, _), a, b in zip(model_a.named_parameters(), grads_a, grads_b):
        assert_close(a, b, "gradients", where=f" of {name}")


def _trimmed_and_full(**extra):
    return _model_pair(dict(trim_pyramid=True, **extra), dict(trim_pyramid=False, **extra))


@pytest.mark.parametrize("lengths", [(40, 25, 33), (1,), (7,), (8,), (57,), (64,)])
def test_trimmed_pyramid_gives_the_full_length_outputs(lengths):
    """Levels cut to their valid length plus one padded column reproduce every valid output of
    the padded length T (exact video padding), for one clip or clips of different lengths."""
    trimmed, full = _trimmed_and_full()
    batch_items = [dict(item, feats=torch.randn(6, n)) for item, n in zip(items(3) * 2, lengths)]
    with torch.no_grad():
        batch = batch_for(trimmed, batch_items)
        a = trimmed.eval().forward_heads(batch)
        b = full.eval().forward_heads(batch)
    want = pyramid_lengths(max(lengths), batch.videos.shape[-1], 4, 2)
    assert [m.shape[1] for m in a.fpn_masks] == want
    assert [m.shape[1] for m in b.fpn_masks] == [batch.videos.shape[-1] >> level for level in range(4)]
    for level, (mask_a, mask_b) in enumerate(zip(a.fpn_masks, b.fpn_masks)):
        length = mask_a.shape[1]
        assert torch.equal(mask_a, mask_b[:, :length]) and not mask_b[:, length:].any()
    assert_same_heads(a, b, valid_only=True)


def test_trimmed_pyramid_gives_the_full_length_losses_and_gradients():
    trimmed, full = _trimmed_and_full()
    trimmed.train(), full.train()
    trimmed.set_drop_path(0.0), full.set_drop_path(0.0)
    _assert_same_losses_and_gradients(trimmed, trimmed(items()), full, full(items()))


@pytest.mark.parametrize("segments", [
    [[3.0, 11.5]],  # one window inside the clip
    [[0.0, 2.0]],  # a positive at position 1: the head's window is clipped at 0
    [[0.0, 1.5], [20.0, 40.0]],  # two windows: one run of positives per window and level
    [[30.0, 40.0]],  # reaching past the shorter clips' ends (positives only where valid)
])
def test_sparse_regression_head_gives_the_dense_losses_and_gradients(segments):
    """Running the regression head only around the positives (training) changes no loss and no gradient."""
    sparse, dense = _model_pair(dict(sparse_reg_head=True), dict(sparse_reg_head=False))
    sparse.train(), dense.train()
    sparse.set_drop_path(0.0), dense.set_drop_path(0.0)
    batch_items = [dict(item, segments=torch.tensor(segments, dtype=torch.float64),
                        one_hot_labels=torch.ones(len(segments), 1, dtype=torch.int64)) for item in items()]
    got, want = sparse(batch_items), dense(batch_items)
    assert want["reg_loss"].item() > 0
    _assert_same_losses_and_gradients(sparse, got, dense, want)


def test_regression_head_at_positives_equals_the_full_head_there_and_is_zero_elsewhere():
    head = RegHead(4, 4, fpn_levels=2, num_layers=3, kernel_size=3, with_ln=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in head.parameters():
            param.uniform_(0.5, 1.5)
    feats = [torch.randn(3, 4, 20), torch.randn(3, 4, 10)]
    masks = [torch.arange(20)[None, None, :] < torch.tensor([20, 14, 9])[:, None, None],
             torch.arange(10)[None, None, :] < torch.tensor([10, 7, 5])[:, None, None]]
    positives = [torch.zeros(3, 20, dtype=torch.bool), torch.zeros(3, 10, dtype=torch.bool)]
    positives[0][0, [0, 1, 2]] = True  # at the start: the window is cut at position 0
    positives[0][1, [12, 13]] = True  # up to the last valid position (padded columns follow)
    positives[0][2, [4, 8]] = True  # two positions far apart: one window spans both
    positives[1][0, [9]] = True  # the last position of the level
    full = head(feats, masks)
    sparse = head.forward_at(feats, masks, positives)
    assert head.receptive_radius == 3
    for level in range(2):
        keep = positives[level][:, None, :]
        assert torch.allclose(sparse[level], full[level] * keep, atol=1e-6)
        assert (sparse[level][~keep.expand_as(sparse[level])] == 0).all()


def test_reference_video_padding_is_never_trimmed():
    model = make_meta_arch("LocPointTransformer", **SMALL, video_pad_mode="reference", trim_pyramid=True).eval()
    with torch.no_grad():
        out = model.forward_heads(batch_for(model, items()))
    assert [m.shape[1] for m in out.fpn_masks] == [64, 32, 16, 8]


# ---------------------------------------------------------------- video-centric batches
def _clip_queries(num_queries=4):
    """Several queries of one clip (same features), texts of different lengths."""
    torch.manual_seed(11)
    feats = torch.randn(6, 37)
    out = []
    for i in range(num_queries):
        out.append({
            "video_id": "clip", "feats": feats, "fps": 30, "duration": 18.0, "feat_stride": 16.043,
            "feat_num_frames": 16.043, "segments": torch.tensor([[2.0 + i, 9.5 + 2 * i]], dtype=torch.float64),
            "one_hot_labels": torch.ones(1, 1, dtype=torch.int64), "query_id": f"clip_{i}", "query": "",
            "query_feats": torch.randn(5, 3 + i),
        })
    return out


def _reference_model(**extra):
    """Reference mode's model switches (configs/modes/reference.yaml), but the text padded by at
    least one column as in the fast model, so that no output depends on its batch."""
    with open(mode_path("reference")) as f:
        switches = yaml.safe_load(f)["model"]
    return make_meta_arch("LocPointTransformer", **SMALL, **{**switches, "text_pad_mode": "at_least_one", **extra})


def test_one_clip_batch_gives_each_query_its_reference_outputs():
    """All queries of a clip in one batch (video embedded once, exact padding, blocked attention)
    equal each query run alone through the reference settings (padded to max_seq_len), on
    valid positions. Text is padded by at least one column in both, so no batch dependence."""
    torch.manual_seed(0)
    fast = make_meta_arch("LocPointTransformer", **SMALL, local_attn_impl="blocked").eval()
    reference = _reference_model().eval()
    reference.load_state_dict(fast.state_dict())
    queries = _clip_queries()
    with torch.no_grad():
        batch = batch_for(fast, queries)
        assert batch.num_videos == 1 and batch.videos.shape[-1] < 64
        together = fast.forward_heads(batch)
        for row, item in enumerate(queries):
            alone = reference.forward_heads(batch_for(reference, [item]))
            for quantity in ("cls_logits", "offsets"):
                for level, (x, y) in enumerate(zip(getattr(together, quantity), getattr(alone, quantity))):
                    length = x.shape[1]
                    assert_close(x[row], y[0, :length], quantity, together.fpn_masks[level][row])
                    assert not alone.fpn_masks[level][0, length:].any()


def test_first_stem_self_attention_runs_once_per_clip():
    """The first stem block's self-attention (text-independent) sees one row per clip; the
    cross-attention and everything after one row per query."""
    torch.manual_seed(0)
    model = make_meta_arch("LocPointTransformer", **SMALL).eval()
    rows = {}
    stem = model.backbone.vid_stem
    stem[0].attn.register_forward_hook(lambda m, a, o: rows.__setitem__("attn0", a[0].shape[0]))
    stem[0].cross_attn.register_forward_hook(lambda m, a, o: rows.__setitem__("cross0", a[0].shape[0]))
    stem[1].attn.register_forward_hook(lambda m, a, o: rows.__setitem__("attn1", a[0].shape[0]))
    with torch.no_grad():
        model.forward_heads(batch_for(model, _clip_queries()))
    assert rows == {"attn0": 1, "cross0": 4, "attn1": 4}


@pytest.mark.parametrize("proj_pdrop,expected_rows", [(0.0, 2), (0.5, 5)])
def test_block_row_index_expands_after_attention_unless_dropout_draws(proj_pdrop, expected_rows):
    """``row_index`` gives the same block output as expanding first; with dropout in training the
    attention runs per query (independent draws per query, as separate rows would get)."""
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, window_size=9, cross_attention=True, proj_pdrop=proj_pdrop)
    x, text = torch.randn(2, 8, 12), torch.randn(5, 8, 4)
    mask = torch.arange(12)[None, None, :] < torch.tensor([12, 7])[:, None, None]
    text_mask = torch.ones(5, 1, 4, dtype=torch.bool)
    row_index = torch.tensor([0, 0, 1, 1, 1])
    seen = []
    block.attn.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    block.train(proj_pdrop > 0)
    shared, shared_mask = block(x, mask, text, text_mask, row_index=row_index)
    assert seen == [expected_rows] and shared.shape == (5, 8, 12)
    if proj_pdrop == 0.0:
        expanded, expanded_mask = block(x[row_index], mask[row_index], text, text_mask)
        assert torch.allclose(shared, expanded, atol=1e-6) and torch.equal(shared_mask, expanded_mask)


def test_training_with_shared_video_rows_gives_reference_losses_and_gradients():
    """Loss and gradients of a one-clip batch (one video row expanded to 4 queries) equal those
    of the reference settings with one row per query, padded to max_seq_len."""
    torch.manual_seed(0)
    fast = make_meta_arch("LocPointTransformer", **SMALL, local_attn_impl="blocked").train()
    reference = _reference_model().train()
    reference.load_state_dict(fast.state_dict())
    queries = _clip_queries()
    separate = [dict(item, video_id=f"clip#{i}") for i, item in enumerate(queries)]  # one row each
    shared_batch = batch_for(fast, queries)
    separate_batch = batch_for(reference, separate)
    assert shared_batch.num_videos == 1 and separate_batch.num_videos == 4
    _assert_same_losses_and_gradients(fast, fast(shared_batch), reference, reference(separate_batch))


def test_eval_results_of_a_clip_batch_equal_one_query_at_a_time():
    torch.manual_seed(0)
    model = make_meta_arch("LocPointTransformer", **SMALL, test_cfg={"max_seg_num": 5, "min_score": 0.001}).eval()
    queries = _clip_queries()
    with torch.no_grad():
        together = model(queries)
        alone = [model([item])[0] for item in queries]
    assert_same_results(together, alone)


# ---------------------------------------------------------------- NMS early stop is wired
@pytest.mark.parametrize("early_stop", [True, False])
def test_test_cfg_nms_early_stop_reaches_batched_nms(monkeypatch, early_stop):
    import libs.utils.nms as nms

    seen = []
    real = nms.batched_nms

    def spy(*args, **kwargs):
        seen.append((kwargs.get("early_stop"), kwargs.get("backend")))
        return real(*args, **kwargs)

    monkeypatch.setattr(nms, "batched_nms", spy)
    torch.manual_seed(0)
    model = make_meta_arch(
        "LocPointTransformer", **SMALL,
        test_cfg={"nms_early_stop": early_stop, "nms_backend": "torch", "max_seg_num": 5},
    ).eval()
    with torch.no_grad():
        results = model(items())
    assert seen == [(early_stop, "torch")] * 3
    assert all(r["scores"].shape[0] <= 5 for r in results)


def test_nms_early_stop_gives_the_same_results_as_the_full_run():
    torch.manual_seed(0)
    cfg = {"max_seg_num": 5, "min_score": 0.001, "nms_sigma": 0.75}
    early = make_meta_arch("LocPointTransformer", **SMALL, test_cfg={**cfg, "nms_early_stop": True}).eval()
    full = make_meta_arch("LocPointTransformer", **SMALL, test_cfg={**cfg, "nms_early_stop": False}).eval()
    full.load_state_dict(early.state_dict())
    with torch.no_grad():
        for a, b in zip(early(items()), full(items())):
            assert torch.equal(a["segments"], b["segments"]) and torch.equal(a["scores"], b["scores"])


# ---------------------------------------------------------------- torch.compile switch
def test_compile_switch_is_validated():
    with pytest.raises(ConfigError, match="model.compile"):
        make_meta_arch("LocPointTransformer", **SMALL, compile=3)


def test_compiled_network_gives_the_same_outputs_and_state_dict():
    """``compile`` wraps the network with torch.compile (the cheap "eager" backend here: it
    checks tracing and wiring; inductor needs a C++ toolchain and minutes on 2 cores)."""
    dynamo = pytest.importorskip("torch._dynamo")
    torch.manual_seed(0)
    plain = make_meta_arch("LocPointTransformer", **SMALL).eval()
    compiled = make_meta_arch("LocPointTransformer", **SMALL, compile="eager").eval()
    compiled.load_state_dict(plain.state_dict())
    assert list(compiled.state_dict()) == list(plain.state_dict())
    dynamo.reset()
    try:
        with torch.no_grad():
            a = plain.forward_heads(batch_for(plain, items()))
            b = compiled.forward_heads(batch_for(compiled, items()))
    except Exception as error:  # pragma: no cover - platform without dynamo support
        pytest.skip(f"torch.compile unavailable here: {error}")
    finally:
        dynamo.reset()
    assert_same_heads(a, b)
    copied = copy.deepcopy(compiled)  # the compiled function is not copied with the model
    assert "_compiled_network" not in copied.__dict__
