"""LocPointTransformer against the reference's golden fixtures (tiny GroundNLQ and GroundNLQ*).

Every float comparison uses the tolerance of its quantity in ``tests/golden.py`` (float32 noise
across CPUs, measured by ``tests/golden_noise.py``); masks, points, counts, labels and label
targets are exact.
"""
import pytest
import torch

from libs.core.errors import ConfigError, DataError
from libs.datasets.collate import collate
from libs.modeling import make_meta_arch
from tests.golden import (
    VARIANTS,
    assert_close,
    assert_same_candidates,
    assert_same_results,
    batch_for,
    build,
    candidates_of,
    channel_first,
    golden,
    inputs,
    record_intermediates,
)


def assert_heads_match(heads, want):
    """Every level's cls logits and offsets, at every position (the reference's padding)."""
    for quantity in ("cls_logits", "offsets"):
        for level, (got, ref) in enumerate(zip(channel_first(getattr(heads, quantity)), want[quantity])):
            assert_close(got, ref, quantity, where=f" level {level}")


def assert_heads_match_at_valid_positions(heads, want, scale=1.0):
    """Every level's cls logits and offsets against the reference's (channel-first, padded to its
    length) at the positions the model's own masks mark valid."""
    for level, mask in enumerate(heads.fpn_masks):
        mask = mask.cpu()
        length = mask.shape[1]
        for quantity, got, ref in (("cls_logits", heads.cls_logits[level], want["cls_logits"][level]),
                                   ("offsets", heads.offsets[level], want["offsets"][level])):
            assert_close(got, ref.permute(0, 2, 1)[:, :length], quantity, mask, scale, f" level {level}")


def assert_grads_match(model, grads, scale=1.0):
    """Every parameter's gradient against the reference's, and no parameter more or less."""
    assert sorted(name for name, _ in model.named_parameters()) == sorted(grads)
    for name, param in model.named_parameters():
        assert_close(param.grad, grads[name], "gradients", scale=scale, where=f" of {name}")


def assert_losses_match(losses, want, scale=1.0):
    for key in ("cls_loss", "reg_loss", "final_loss"):
        assert_close(losses[key], want["losses"][key], "losses", scale=scale, where=f" {key}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_intermediate_matches_reference_batch_of_three(variant):
    want = golden(variant, "outputs_eval.pt")
    model = build(variant)
    rec = record_intermediates(model)
    with torch.no_grad():
        batch = batch_for(model, inputs(variant))
        heads = model.forward_heads(batch)
    assert batch.videos.shape[-1] == want["padded_video_length"] == 256
    assert torch.equal(batch.video_masks, want["vid_mask"]) and torch.equal(batch.text_masks, want["txt_mask"])
    assert_close(rec["txt_embd"][0], want["txt_embd"], "features", where=" txt_embd")
    assert_close(rec["vid_embd"][0], want["vid_embd"], "features", where=" vid_embd")
    for name in ("txt_stem", "vid_stem", "branch"):
        assert len(rec[name]) == len(want[name])
        for i, ref in enumerate(want[name]):
            assert_close(rec[name][i], ref, "features", where=f" {name}[{i}]")
    fpn_feats, fpn_masks = rec["fpn"]
    for level, length in enumerate(want["level_lengths"]):
        assert_close(fpn_feats[level], want["fpn_feats"][level], "features", where=f" fpn[{level}]")
        assert torch.equal(fpn_masks[level], want["fpn_masks"][level])
        assert torch.equal(heads.fpn_masks[level], want["fpn_masks"][level][:, 0])
        assert torch.equal(heads.points[level], want["points"][level]) and heads.points[level].shape[0] == length
    assert_heads_match(heads, want)


def test_float64_model_stays_within_the_measured_float32_deviation():
    """The golden README's float64 rerun deviates from the fixtures by <= 5.3e-6 (cls_logits):
    the fixtures' own rounding, well inside the float32 tolerances."""
    want = golden("tiny_model", "outputs_eval.pt")
    model = build("tiny_model").double()
    with torch.no_grad():
        heads = model.forward_heads(batch_for(model, inputs("tiny_model")))
    assert heads.cls_logits[0].dtype == torch.float64
    assert_heads_match(heads, want)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pre_nms_candidates_and_results_match_reference(variant):
    want = golden(variant, "outputs_eval.pt")
    model = build(variant)
    with torch.no_grad():
        heads = model.forward_heads(batch_for(model, inputs(variant)))
        results = model(inputs(variant))
    for ours, ref in zip(candidates_of(model, heads), want["pre_nms"]):
        assert_same_candidates(ours, ref)
    assert_same_results(results, want["results"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", ["pre_nms_topk_20", "max_seg_num_50"])
def test_test_cfg_variants_match_reference(variant, name):
    want = golden(variant, "outputs_eval_variants.pt")[name]
    cfg = golden(variant, "config.json")["model"]
    model = build(variant, test_cfg={**cfg["test_cfg"], **want["test_cfg_overrides"]})
    with torch.no_grad():
        results = model(inputs(variant))
    assert_same_results(results, want["results"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_query_runs_match_reference(variant):
    single = golden(variant, "outputs_eval_single.pt")["per_query"]
    model = build(variant)
    for item, want in zip(inputs(variant), single):
        with torch.no_grad():
            heads = model.forward_heads(batch_for(model, [item]))
            results = model([item])
        assert_heads_match(heads, want)
        assert_same_results(results, [want["results"]])


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_video_padding_reproduces_reference_at_valid_positions(variant):
    want = golden(variant, "outputs_eval.pt")
    model = build(variant, video_pad_mode="exact")
    with torch.no_grad():
        batch = batch_for(model, inputs(variant))
        heads = model.forward_heads(batch)
        results = model(inputs(variant))
    assert batch.videos.shape[-1] == 208  # roundup(200 + 8, 8) instead of 256
    assert len(heads.fpn_masks) == len(want["fpn_masks"]) == 4
    for mask, ref_mask in zip(heads.fpn_masks, want["fpn_masks"]):  # (3, T_l), (3, 1, T_ref)
        assert torch.equal(mask, ref_mask[:, 0, :mask.shape[1]]) and mask.sum() == ref_mask.sum()
    assert_heads_match_at_valid_positions(heads, want)
    assert_same_results(results, want["results"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_at_least_one_text_padding_makes_outputs_batch_independent(variant):
    want = golden(variant, "outputs_eval.pt")
    model = build(variant, video_pad_mode="exact", text_pad_mode="at_least_one")
    items = inputs(variant)
    with torch.no_grad():
        together = model(items)
        alone = [model([item])[0] for item in items]
    # a batch of 3 and of 1 take different kernels (blocked attention GEMMs of other shapes):
    # the same float32 noise as another CPU's
    assert_same_results(together, alone)
    # q0 and q1 were padded in the reference's batch, so they also equal the reference there
    assert_same_results(together[:2], want["results"][:2])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("video_pad_mode", ["reference", "exact"])
def test_train_losses_normaliser_and_gradients_match_reference(variant, video_pad_mode):
    want = golden(variant, "outputs_train.pt")
    grads = golden(variant, "grads_train.pt")
    model = build(variant, video_pad_mode=video_pad_mode)
    model.set_drop_path(0.0)
    model.train()
    assert model.criterion.normalizer.value == want["loss_normalizer_before"] == 200.0
    losses = model(inputs(variant))
    assert model.criterion.normalizer.value == pytest.approx(want["loss_normalizer_after"], abs=1e-12)
    assert_losses_match(losses, want)
    losses["final_loss"].backward()
    assert_grads_match(model, grads)


def test_train_labels_seen_by_the_model_match_reference():
    """The targets the model assigns from its own points equal the golden ones (reference padding)."""
    from libs.modeling import targets

    want = golden("tiny_model", "outputs_train.pt")
    model = build("tiny_model")
    with torch.no_grad():
        batch = batch_for(model, inputs("tiny_model"))
        heads = model.forward_heads(batch)
    gt_cls, gt_offsets = targets.assign_labels(torch.cat(heads.points), batch.segments, batch.labels)
    for got, ref in zip(gt_cls + gt_offsets, want["gt_cls"] + want["gt_offsets"]):
        assert torch.equal(got, ref)


def shared_clip_items(variant):
    """Three queries about clip 0 (the golden texts of q0, q1, q2)."""
    items = inputs(variant)
    shared = []
    for i, item in enumerate(items):
        query = dict(items[0])
        query.update(query_id=f"shared_{i}", query_feats=item["query_feats"], segments=item["segments"])
        shared.append(query)
    return shared


@pytest.mark.parametrize("variant", VARIANTS)
def test_shared_clip_rows_equal_separate_rows(variant):
    model = build(variant, video_pad_mode="exact", text_pad_mode="at_least_one")
    model.set_drop_path(0.0)
    items = shared_clip_items(variant)
    kwargs = dict(max_seq_len=256, pad_multiple=model.pad_multiple, video_pad_mode="exact",
                  text_pad_mode="at_least_one")
    grouped = collate(items, is_training=True, **kwargs)
    separate_items = [dict(item, video_id=f"copy_{i}", feats=item["feats"].clone()) for i, item in enumerate(items)]
    separate = collate(separate_items, is_training=True, **kwargs)
    assert grouped.num_videos == 1 and grouped.video_index.tolist() == [0, 0, 0]
    assert separate.num_videos == 3
    with torch.no_grad():
        a, b = model.forward_heads(grouped), model.forward_heads(separate)
    # equal up to rounding (a batch of 1 and of 3 take different convolution kernels)
    for quantity in ("cls_logits", "offsets"):
        for x, y in zip(getattr(a, quantity), getattr(b, quantity)):
            assert_close(x, y, quantity)
    model.train()
    grads = []
    for batch in (grouped, separate):
        model.zero_grad()
        model.criterion.normalizer.value = 200.0
        model(batch)["final_loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert_close(grads[0][name], grads[1][name], "gradients", where=f" of {name}")


def test_unknown_or_inconsistent_model_keys_raise_config_errors():
    cfg = golden("tiny_model", "config.json")["model"]
    with pytest.raises(ConfigError, match="embd_dimm.*embd_dim"):
        make_meta_arch("LocPointTransformer", **cfg, embd_dimm=3)
    with pytest.raises(ConfigError, match="video_pad_mode"):
        make_meta_arch("LocPointTransformer", **{**cfg, "video_pad_mode": "short"})
    with pytest.raises(ConfigError, match="regression_range"):
        make_meta_arch("LocPointTransformer", **{**cfg, "regression_range": [[0, 4]]})
    with pytest.raises(ConfigError, match="max_seq_len"):
        make_meta_arch("LocPointTransformer", **{**cfg, "max_seq_len": 100})
    with pytest.raises(ConfigError, match="backbone_type"):
        make_meta_arch("LocPointTransformer", **{**cfg, "backbone_type": "conv"})


def test_training_without_ground_truth_names_the_query():
    model = build("tiny_model").train()
    items = inputs("tiny_model")
    items[1]["segments"] = None
    with pytest.raises(DataError, match="golden-annotation-1_2"):
        model(items)
