"""Decoding and post-processing: golden parity with the reference and hand-worked cases."""
import json

import pytest
import torch

from conftest import fixture_path
from libs.core.errors import ConfigError
from libs.evaluation.postprocess import decode_candidates, grid_to_seconds, postprocess, results_of_heads
from libs.modeling.meta_archs import HeadOutputs
from libs.modeling.targets import assign_labels
from tests.golden import assert_same_candidates, assert_same_results

VARIANTS = ["tiny_model", "tiny_model_star"]
META_KEYS = ("video_id", "query_id", "duration", "fps", "feat_stride", "feat_num_frames")


def _golden(variant: str, name: str):
    return torch.load(fixture_path("golden", variant, name), weights_only=True)


def _test_cfg(variant: str) -> dict:
    with open(fixture_path("golden", variant, "config.json")) as f:
        return json.load(f)["test_cfg"]


def _head_outputs(evaluation: dict):
    """Golden head outputs, channel-first (B, C, T_l) as emitted -> (B, T_l, C); masks (B, T_l)."""
    masks = [m[:, 0] for m in evaluation["fpn_masks"]]
    logits = [c.permute(0, 2, 1) for c in evaluation["cls_logits"]]
    offsets = [o.permute(0, 2, 1) for o in evaluation["offsets"]]
    return evaluation["points"], masks, logits, offsets


def _assert_same_candidate_set(ours: dict, ref: dict) -> None:
    assert ours["segments"].dtype == torch.float32 and ours["labels"].dtype == torch.int64
    assert_same_candidates(ours, ref)


def _assert_same_results(ours: list, ref: list) -> None:
    assert_same_results(ours, ref)
    for got, want in zip(ours, ref):
        assert torch.equal(torch.signbit(got["segments"]), torch.signbit(want["segments"]))  # -0.0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("topk, source", [(2000, "eval"), (20, "pre_nms_topk_20")])
def test_golden_pre_nms_candidates(variant, topk, source):
    evaluation = _golden(variant, "outputs_eval.pt")
    if source == "eval":
        reference = evaluation["pre_nms"]
    else:
        reference = _golden(variant, "outputs_eval_variants.pt")[source]["pre_nms"]
    candidates = decode_candidates(*_head_outputs(evaluation), 0.001, topk, 0.001)
    assert len(candidates) == len(reference) == 3
    for ours, ref in zip(candidates, reference):
        _assert_same_candidate_set(ours, ref)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", ["eval", "max_seg_num_50"])
def test_golden_results(variant, source):
    pytest.importorskip("libs.utils.nms")
    inputs = _golden(variant, "inputs.pt")
    meta = [{key: item[key] for key in META_KEYS} for item in inputs]
    test_cfg = _test_cfg(variant)
    if source == "eval":
        fixture = _golden(variant, "outputs_eval.pt")
    else:
        fixture = _golden(variant, "outputs_eval_variants.pt")[source]
        test_cfg.update(fixture["test_cfg_overrides"])
    results = postprocess(fixture["pre_nms"], meta, test_cfg)
    _assert_same_results(results, fixture["results"])


def _two_level_points():
    """Level 0: stride 1, t = 0..3; level 1: stride 2, t = 0, 2 (ranges unused by decoding)."""
    level0 = torch.tensor([[float(t), 0.0, 4.0, 1.0] for t in range(4)])
    level1 = torch.tensor([[float(t), 2.0, 8.0, 2.0] for t in (0, 2)])
    return [level0, level1]


def test_per_level_topk_threshold_mask_and_duration_filter():
    points = _two_level_points()
    big = 10.0
    # level 0 (sigmoid): point 1 has zero offsets (length 0, dropped after top-k); point 2 is
    # above the threshold but third (cut by the per-level top-2); point 3 is padded (score 0)
    logits0 = torch.tensor([[[0.0], [big], [-1.0], [big]]])  # (1, 4, 1)
    offsets0 = torch.tensor([[[0.5, 0.5], [0.0, 0.0], [1.0, 1.0], [1.0, 2.0]]])
    mask0 = torch.tensor([[True, True, True, False]])
    logits1 = torch.tensor([[[1.0], [2.0]]])
    offsets1 = torch.tensor([[[0.25, 1.0], [1.0, 0.5]]])
    mask1 = torch.tensor([[True, True]])
    (out,) = decode_candidates(
        points, [mask0, mask1], [logits0, logits1], [offsets0, offsets1],
        pre_nms_thresh=0.001, pre_nms_topk=2, duration_thresh=0.001,
    )
    # level 0 top-2 by score: point 1 (dropped: length 0), point 0
    # level 1 top-2: point 1 (t=2: [0, 3]) then point 0 (t=0: [-0.5, 2])
    assert out["segments"].tolist() == [[-0.5, 0.5], [0.0, 3.0], [-0.5, 2.0]]
    assert torch.equal(out["scores"], torch.sigmoid(torch.tensor([0.0, 2.0, 1.0])))
    assert out["labels"].tolist() == [0, 0, 0]


def test_equal_scores_keep_their_point_order():
    """60 points with the same score: a stable sort keeps point order (torch's unstable CPU sort
    would not, as the reference's hard NMS shows with 50 equal scores)."""
    points = [torch.tensor([[float(t), 0.0, 100.0, 1.0] for t in range(60)])]
    (out,) = decode_candidates(points, [torch.ones(1, 60, dtype=torch.bool)], [torch.zeros(1, 60, 1)],
                               [torch.ones(1, 60, 2)], 0.001, 2000, 0.001)
    assert out["segments"][:, 0].tolist() == [t - 1.0 for t in range(60)]


def test_thresholds_are_strict():
    """A score exactly at ``pre_nms_thresh`` and a length exactly at ``duration_thresh`` are out."""
    points = [torch.tensor([[0.0, 0.0, 4.0, 1.0], [1.0, 0.0, 4.0, 1.0]])]
    masks = [torch.ones(1, 2, dtype=torch.bool)]
    logits = [torch.tensor([[[0.0], [1.0]]])]  # sigmoid 0.5 and 0.73
    offsets = [torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])]  # lengths 2 and 0
    (at_score,) = decode_candidates(points, masks, logits, offsets, 0.5, 10, -1.0)
    assert at_score["segments"].tolist() == [[1.0, 1.0]]  # only the 0.73 point
    (at_length,) = decode_candidates(points, masks, logits, offsets, 0.001, 10, 0.0)
    assert at_length["segments"].tolist() == [[-1.0, 1.0]]  # the zero-length one is out


def test_level_lists_of_different_lengths_are_an_error():
    points = _two_level_points()
    masks = [torch.ones(1, 4, dtype=torch.bool)]  # one level short
    with pytest.raises(ValueError, match=r"per-level lists of different lengths \(points 2, masks 1, "
                                         r"cls_logits 2, offsets 2\)"):
        decode_candidates(points, masks, [torch.zeros(1, 4, 1), torch.zeros(1, 2, 1)],
                          [torch.zeros(1, 4, 2), torch.zeros(1, 2, 2)], 0.001, 10, 0.001)


def test_multiclass_labels_and_batch_split():
    points = [torch.tensor([[0.0, 0, 4, 1], [1.0, 0, 4, 1]])]
    logits = torch.full((2, 2, 3), -20.0)  # (B, T, C)
    logits[0, 1, 2] = 3.0
    logits[1, 0, 1] = 1.0
    logits[1, 1, 0] = 2.0
    offsets = torch.ones(2, 2, 2)
    masks = [torch.ones(2, 2, dtype=torch.bool)]
    first, second = decode_candidates(points, masks, [logits], [offsets], 0.001, 10, 0.001)
    assert first["labels"].tolist() == [2] and first["segments"].tolist() == [[0.0, 2.0]]
    assert second["labels"].tolist() == [0, 1]
    assert second["segments"].tolist() == [[0.0, 2.0], [-1.0, 1.0]]


def test_round_trip_targets_decode_to_the_window():
    """A window encoded as targets at its positive points decodes back to itself."""
    points = _two_level_points()
    window = torch.tensor([[1.0, 3.5]], dtype=torch.float64)
    gt_cls, gt_offsets = assign_labels(torch.cat(points), [window], [torch.tensor([[1]])])
    positive = gt_cls[0][:, 0] > 0  # (P,)
    assert positive.any()
    logits = torch.where(positive, 5.0, -20.0).float()[None, :, None]  # (1, P, 1)
    offsets = gt_offsets[0].clamp(min=0).float()[None]  # (1, P, 2)
    sizes = [len(p) for p in points]
    (out,) = decode_candidates(
        points, [torch.ones(1, n, dtype=torch.bool) for n in sizes],
        list(logits.split(sizes, dim=1)), list(offsets.split(sizes, dim=1)), 0.001, 100, 0.001,
    )
    assert out["segments"].shape[0] == int(positive.sum())
    assert torch.allclose(out["segments"], window.float().expand_as(out["segments"]), atol=1e-6)


def test_grid_to_seconds_offset_and_clamping():
    segments = torch.tensor([[-2.0, 1.0], [10.0, 300.0]])
    seconds = grid_to_seconds(segments, 30, 16.0, 16.0, 100.0)
    # (x * 16 + 8) / 30
    assert seconds.flatten().tolist() == pytest.approx([0.0, 0.8, 168 / 30, 100.0], abs=1e-6)
    assert torch.signbit(seconds[0, 0]).item()  # the reference's x *= 0 gives -0.0
    assert seconds[1, 1].item() == 100.0
    plain = grid_to_seconds(segments, 30, 16.0, 16.0, 100.0, half_window_offset=False)
    assert plain.flatten().tolist() == pytest.approx([0.0, 16 / 30, 160 / 30, 100.0], abs=1e-6)


def _cfg(**overrides):
    cfg = {
        "nms_method": "none", "iou_threshold": 0.1, "min_score": 0.001, "max_seg_num": 5,
        "nms_sigma": 0.75, "multiclass_nms": True, "voting_thresh": 0.9,
    }
    cfg.update(overrides)
    return cfg


def test_postprocess_without_nms_converts_and_keeps_empty():
    meta = [
        {"video_id": "v", "query_id": "q0", "duration": 5.0, "fps": 30, "feat_stride": 16.043,
         "feat_num_frames": 16.043},
        {"video_id": "v", "query_id": "q1", "duration": 5.0, "fps": 30, "feat_stride": 16.043,
         "feat_num_frames": 16.043},
    ]
    candidates = [
        {"segments": torch.tensor([[1.0, 2.0]]), "scores": torch.tensor([0.5]),
         "labels": torch.tensor([0])},
        {"segments": torch.zeros(0, 2), "scores": torch.zeros(0),
         "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    first, second = postprocess(candidates, meta, _cfg())
    assert first["query_id"] == "q0"
    expected = [1.5 * 16.043 / 30, 2.5 * 16.043 / 30]  # +half a window (0.5 * num_frames)
    assert first["segments"].flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert second["segments"].shape == (0, 2)
    shifted = postprocess(candidates, meta, _cfg(half_window_offset=False))[0]
    expected = [16.043 / 30, 2 * 16.043 / 30]
    assert shifted["segments"].flatten().tolist() == pytest.approx(expected, abs=1e-6)


def _meta(num):
    return [{"video_id": "v", "query_id": f"q{i}", "duration": 50.0, "fps": 30, "feat_stride": 16.0,
             "feat_num_frames": 16.0} for i in range(num)]


@pytest.mark.parametrize("cfg, expected", [
    (_cfg(nms_method="soft"),
     dict(use_soft_nms=True, multiclass=True, sigma=0.75, voting_thresh=0.9, backend="auto", early_stop=True)),
    (_cfg(nms_method="hard", multiclass_nms=False, nms_sigma=0.5, voting_thresh=0.6, iou_threshold=0.3,
          min_score=0.01, max_seg_num=3, nms_backend="torch", nms_early_stop=False),
     dict(use_soft_nms=False, multiclass=False, sigma=0.5, voting_thresh=0.6, backend="torch", early_stop=False)),
])
def test_postprocess_hands_every_nms_key_to_batched_nms(monkeypatch, cfg, expected):
    import libs.utils.nms as nms

    seen = []
    real = nms.batched_nms

    def spy(segs, scores, labels, iou_threshold, min_score, max_seg_num, **kwargs):
        seen.append(((iou_threshold, min_score, max_seg_num), kwargs))
        return real(segs, scores, labels, iou_threshold, min_score, max_seg_num, **kwargs)

    monkeypatch.setattr(nms, "batched_nms", spy)
    candidates = [{"segments": torch.tensor([[1.0, 4.0], [1.5, 4.0], [9.0, 12.0]]),
                   "scores": torch.tensor([0.9, 0.8, 0.4]), "labels": torch.tensor([0, 1, 0])}]
    (result,) = postprocess(candidates, _meta(1), cfg)
    assert seen == [((cfg["iou_threshold"], cfg["min_score"], cfg["max_seg_num"]), expected)]
    assert 0 < result["scores"].numel() <= cfg["max_seg_num"]


def test_postprocess_needs_one_meta_per_candidate_set():
    candidates = [{"segments": torch.zeros(0, 2), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    with pytest.raises(ValueError, match="postprocess: 1 candidate sets but 2 meta dicts"):
        postprocess(candidates, _meta(2), _cfg())


def test_postprocess_rejects_bad_test_cfg():
    with pytest.raises(ConfigError, match="nms_method"):
        postprocess([], [], _cfg(nms_method="fast"))
    cfg = _cfg()
    del cfg["max_seg_num"]
    with pytest.raises(ConfigError, match="max_seg_num"):
        postprocess([], [], cfg)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", ["eval", "pre_nms_topk_20", "max_seg_num_50"])
def test_results_of_heads_from_the_models_outputs(variant, source):
    """The model's head outputs -> its results, with every test_cfg key of the fixture."""
    evaluation = _golden(variant, "outputs_eval.pt")
    test_cfg = _test_cfg(variant)
    want = evaluation["results"]
    if source != "eval":
        variants = _golden(variant, "outputs_eval_variants.pt")[source]
        test_cfg, want = {**test_cfg, **variants["test_cfg_overrides"]}, variants["results"]
    points, masks, logits, offsets = _head_outputs(evaluation)
    heads = HeadOutputs(points=points, fpn_masks=masks, cls_logits=logits, offsets=offsets)
    meta = [{key: item[key] for key in META_KEYS} for item in _golden(variant, "inputs.pt")]
    _assert_same_results(results_of_heads(heads, meta, test_cfg), want)
    for key in ("pre_nms_thresh", "duration_thresh"):  # the thresholds are the config's: none passes these
        assert all(r["scores"].numel() == 0 for r in results_of_heads(heads, meta, {**test_cfg, key: 1000.0}))
