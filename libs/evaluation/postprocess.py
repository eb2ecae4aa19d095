"""From head outputs to windows, on the outputs' device: candidate decoding, NMS, seconds.

Spec section 7. ``decode_candidates`` turns per-level scores and offsets into pre-NMS candidates in
grid units, vectorised over the batch (a host synchronisation per batch, to split the kept
candidates per query). ``postprocess`` runs NMS where the candidates are (CUDA: every query's soft
NMS in one kernel launch; CPU: the C++ NMS query by query) and converts grid units to seconds with
the reference's half-window offset. ``results_of_heads`` is both, from a model's ``HeadOutputs``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import Tensor

from libs.core.errors import ConfigError

NMS_METHODS = ("soft", "hard", "none")

# test_cfg keys post-processing reads (``half_window_offset`` is optional, default True).
POSTPROCESS_KEYS = (
    "nms_method",
    "iou_threshold",
    "min_score",
    "max_seg_num",
    "nms_sigma",
    "multiclass_nms",
    "voting_thresh",
)


def decode_candidates(
    points: Sequence[Tensor],
    fpn_masks: Sequence[Tensor],
    cls_logits: Sequence[Tensor],
    offsets: Sequence[Tensor],
    pre_nms_thresh: float,
    pre_nms_topk: int,
    duration_thresh: float,
) -> List[Dict[str, Tensor]]:
    """Pre-NMS candidates of every query, as the reference's per-video inference produces them.

    Per level: ``prob = sigmoid(logit) * mask`` flattened over ``(T_l, C)``; keep ``prob >
    pre_nms_thresh``; sort descending; keep the top ``pre_nms_topk`` **of this level**; decode
    ``[t - o_left * s, t + o_right * s]``; keep ``length > duration_thresh``. Levels are concatenated
    in order 0..L-1 (the NMS input order, which matters for ties).

    Args:
        points: per level ``(T_l, 4)`` rows ``(t, lo, hi, s)``.
        fpn_masks: per level ``(B, T_l)`` bool. cls_logits: per level ``(B, T_l, C)``.
        offsets: per level ``(B, T_l, 2)`` in stride units (non-negative).

    Returns:
        Per query ``{"segments": (N, 2) grid units, "scores": (N,), "labels": (N,) int64}`` on the
        input's device; float32 for float32 heads.

    Ties: the sort is stable (equal scores keep their point order). The reference's CPU sort gives
    the same order; on other devices its unstable sort may not.
    """
    num_levels = {len(points), len(fpn_masks), len(cls_logits), len(offsets)}
    if len(num_levels) != 1:
        raise ValueError(
            f"decode_candidates: per-level lists of different lengths (points {len(points)}, "
            f"masks {len(fpn_masks)}, cls_logits {len(cls_logits)}, offsets {len(offsets)})"
        )
    level_segments, level_scores, level_labels, level_keep = [], [], [], []
    for pts, mask, logits, offs in zip(points, fpn_masks, cls_logits, offsets):
        batch, _, num_classes = logits.shape
        prob = (logits.sigmoid() * mask.unsqueeze(-1)).flatten(1)  # (B, T_l * C)
        # all scores above the threshold sort before all others, so the first min(k, count)
        # sorted entries are exactly the reference's thresholded top-k
        num_top = min(pre_nms_topk, prob.shape[1])
        top_prob, top_index = prob.sort(dim=1, descending=True, stable=True)
        top_prob, top_index = top_prob[:, :num_top], top_index[:, :num_top]  # (B, K)
        point_index = torch.div(top_index, num_classes, rounding_mode="floor")  # (B, K)
        class_index = torch.fmod(top_index, num_classes)  # (B, K)

        top_offsets = torch.gather(offs, 1, point_index.unsqueeze(-1).expand(-1, -1, 2))  # (B, K, 2)
        top_points = pts[point_index]  # (B, K, 4)
        starts = top_points[..., 0] - top_offsets[..., 0] * top_points[..., 3]  # (B, K)
        ends = top_points[..., 0] + top_offsets[..., 1] * top_points[..., 3]  # (B, K)

        keep = (top_prob > pre_nms_thresh) & ((ends - starts) > duration_thresh)  # (B, K)
        level_segments.append(torch.stack((starts, ends), dim=-1))
        level_scores.append(top_prob)
        level_labels.append(class_index)
        level_keep.append(keep)

    segments = torch.cat(level_segments, dim=1)  # (B, K_all, 2)
    scores = torch.cat(level_scores, dim=1)  # (B, K_all)
    labels = torch.cat(level_labels, dim=1)  # (B, K_all)
    keep = torch.cat(level_keep, dim=1)  # (B, K_all)

    counts = keep.sum(dim=1).tolist()  # a host synchronisation: the per-query split needs the counts
    per_query = zip(
        segments[keep].split(counts), scores[keep].split(counts), labels[keep].split(counts)
    )
    return [{"segments": s, "scores": p, "labels": c} for s, p, c in per_query]


def _check_test_cfg(test_cfg: Mapping[str, Any]) -> None:
    missing = [key for key in POSTPROCESS_KEYS if key not in test_cfg]
    if missing:
        raise ConfigError(f"test_cfg: missing key(s) {missing} needed for post-processing")
    if test_cfg["nms_method"] not in NMS_METHODS:
        raise ConfigError(
            f"test_cfg.nms_method: expected one of {NMS_METHODS}, got {test_cfg['nms_method']!r}"
        )


def grid_to_seconds(
    segments: Tensor,
    fps: float,
    feat_stride: float,
    feat_num_frames: float,
    duration: float,
    half_window_offset: bool = True,
) -> Tensor:
    """Grid units -> seconds, clamped to ``[0, duration]``, bit-identical to the reference.

    ``s = (x * feat_stride + 0.5 * feat_num_frames) / fps``: the reference adds half a feature window
    (+0.267 s for Ego4D) that its data loader did not subtract, so a window moves on a round trip.
    ``half_window_offset=False`` drops that term (not the reference). Values ``<= 0`` become 0 by a
    multiplication with 0 (so negative values give ``-0.0``, as in the reference); values
    ``>= duration`` become ``duration``.
    """
    if half_window_offset:
        seconds = (segments * feat_stride + 0.5 * feat_num_frames) / fps
    else:
        seconds = (segments * feat_stride) / fps
    seconds[seconds <= 0.0] *= 0.0
    beyond = seconds >= duration
    seconds[beyond] = seconds[beyond] * 0.0 + duration
    return seconds


def postprocess(
    candidates: Sequence[Mapping[str, Tensor]],
    meta: Sequence[Mapping[str, Any]],
    test_cfg: Mapping[str, Any],
) -> List[Dict[str, Any]]:
    """NMS of every query's candidates on their device, then windows in seconds (``grid_to_seconds``).

    Args:
        candidates: ``decode_candidates`` output (any device; the results stay there).
        meta: per query ``video_id, query_id, duration, fps, feat_stride, feat_num_frames``.
        test_cfg: the reference's NMS keys (``nms_method`` soft/hard/none, ``iou_threshold``,
            ``min_score``, ``max_seg_num``, ``nms_sigma``, ``multiclass_nms``, ``voting_thresh``) and
            optionally ``half_window_offset`` (default True, the reference's conversion),
            ``nms_backend`` (default "auto") and ``nms_early_stop`` (default True: stop each NMS
            after ``max_seg_num`` selections, exact; False runs over every candidate, as the
            reference).

    Returns per query ``{video_id, query_id, segments (K, 2) s, scores (K,), labels (K,)}``.
    """
    _check_test_cfg(test_cfg)
    if len(candidates) != len(meta):
        raise ValueError(f"postprocess: {len(candidates)} candidate sets but {len(meta)} meta dicts")
    method = test_cfg["nms_method"]
    windows = [(c["segments"].detach(), c["scores"].detach(), c["labels"].detach()) for c in candidates]
    if method != "none":
        from libs.utils.nms import batched_nms_of_queries  # imported here: NMS backends load lazily

        windows = batched_nms_of_queries(
            windows,
            test_cfg["iou_threshold"],
            test_cfg["min_score"],
            test_cfg["max_seg_num"],
            use_soft_nms=(method == "soft"),
            multiclass=test_cfg["multiclass_nms"],
            sigma=test_cfg["nms_sigma"],
            voting_thresh=test_cfg["voting_thresh"],
            backend=test_cfg.get("nms_backend", "auto"),
            early_stop=bool(test_cfg.get("nms_early_stop", True)),
        )
    half_window_offset = bool(test_cfg.get("half_window_offset", True))
    results = []
    for (segments, scores, labels), info in zip(windows, meta):
        segments = grid_to_seconds(
            segments, info["fps"], info["feat_stride"], info["feat_num_frames"], info["duration"],
            half_window_offset,
        )
        results.append({"video_id": info["video_id"], "query_id": info["query_id"], "segments": segments,
                        "scores": scores, "labels": labels})
    return results


def results_of_heads(heads: Any, meta: Sequence[Mapping[str, Any]], test_cfg: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Per-query results from a model's ``HeadOutputs`` (points, fpn_masks, cls_logits, offsets)."""
    candidates = decode_candidates(
        heads.points, heads.fpn_masks, heads.cls_logits, heads.offsets,
        test_cfg["pre_nms_thresh"], test_cfg["pre_nms_topk"], test_cfg["duration_thresh"],
    )
    return postprocess(candidates, meta, test_cfg)
