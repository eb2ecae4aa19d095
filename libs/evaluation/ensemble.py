"""Fusing the predictions of several models into one submission (spec section 10).

Two methods, both per query over ``[start, end, score]`` windows (best first) of each model:

``reference`` — the reference's ``ensemble.py``, step for step:
  1. the models' top-1 windows are chain-clustered by centre (sorted centres; a gap < 2.0 s joins
     the current cluster); each cluster proposes the element-wise mean of its *middle* member
     (median by centre; for an even count the higher-scoring of the two central members, ties ->
     the lower) and its *best* member (first top score), ``[s, e, mean score]``;
     proposals are ordered by their cluster's total score;
  2. candidates = top-4 of each model (in model order), then the proposals; stable sort by score;
     greedy temporal NMS (IoU > 0.5 suppresses; span union, zero span -> IoU 0), at most 5 kept;
  3. padded to 5 by repeating the last window.
  One fix: the reference keyed top-1 windows by their centre in a dict, so two models with the
  same centre silently lost one window; here equal centres are all kept (they join one cluster).

``weighted`` — 1-D weighted box fusion: each model's windows, weighted score = score x model
  weight, are visited by decreasing weighted score; a window joins the existing cluster whose fused
  window overlaps it most (IoU >= ``iou_threshold``) unless that cluster already holds a window of
  the same model, otherwise it starts a cluster. A cluster's window is the weighted-score average
  of its members' boundaries; its score is the sum of its weighted scores divided by the sum of all
  model weights (so agreement across models ranks first and a window only one model proposes is
  discounted). Clusters are ranked by that score; the top ``top_k`` are kept, padded as above.
  Scores are assumed comparable across models (same architecture: sigmoid confidences).
"""
from __future__ import annotations

from typing import Sequence

from libs.core.errors import DataError

ENSEMBLE_METHODS = ("reference", "weighted")
REFERENCE_TOP_K = 5  # windows per query in the output
REFERENCE_PER_MODEL = 4  # windows taken from each model
REFERENCE_CLUSTER_GAP_S = 2.0  # top-1 centres closer than this join one cluster
REFERENCE_NMS_THRESHOLD = 0.5

Window = list  # [start, end, score] (proposals carry extra trailing entries)


def span_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU with the span as union, 0 when the span is 0 (the reference's ``temporal_nms`` IoU)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return 0.0 if union == 0 else inter / union


def cluster_top1(windows: Sequence[Window], gap: float = REFERENCE_CLUSTER_GAP_S) -> list[Window]:
    """Cluster top-1 windows by centre and propose one window per cluster.

    Returns ``[start, end, mean_score, 0, total_score]`` proposals sorted by total score
    (descending, stable), exactly as the reference's ``top1_generator`` (minus its collision).
    """
    if not windows:
        return []
    # sort by centre; equal centres keep input (model) order instead of overwriting each other
    members = sorted(([w[0], w[1], w[-1]] for w in windows), key=lambda w: (w[0] + w[1]) / 2)
    clusters: list[list[Window]] = [[members[0]]]
    for prev, cur in zip(members, members[1:]):
        if (cur[0] + cur[1]) / 2 - (prev[0] + prev[1]) / 2 < gap:
            clusters[-1].append(cur)
        else:
            clusters.append([cur])
    proposals = []
    for cluster in clusters:
        scores = [w[2] for w in cluster]
        best = cluster[scores.index(max(scores))]  # first of the top scores
        half = len(cluster) // 2
        if len(cluster) % 2:
            middle = cluster[half]
        else:  # two central members: the higher-scoring, ties -> the lower one
            upper, lower = cluster[half], cluster[half - 1]
            middle = upper if upper[2] > lower[2] else lower
        proposal = [(m + b) / 2 for m, b in zip(middle, best)]
        proposals.append(proposal + [0, sum(scores)])
    return sorted(proposals, key=lambda p: p[-1], reverse=True)


def temporal_nms(candidates: Sequence[Window], threshold: float, max_keep: int) -> list[Window]:
    """Greedy NMS on candidates sorted by score (stable): keep the first, drop later ones with
    ``span_iou > threshold``, repeat; at most ``max_keep``. (The reference appends its last
    unsuppressed candidate without comparing it, which is the same thing.)
    """
    remaining = sorted(candidates, key=lambda c: c[2], reverse=True)
    kept: list[Window] = []
    while remaining and len(kept) < max_keep:
        head = remaining.pop(0)
        kept.append(head)
        remaining = [c for c in remaining if span_iou(head, c) <= threshold]
    return kept


def pad_windows(windows: Sequence[Sequence[float]], top_k: int) -> list[list[float]]:
    """``[start, end]`` of the first ``top_k`` windows, padded by repeating the last."""
    out = [[float(w[0]), float(w[1])] for w in windows[:top_k]]
    if not out:
        raise DataError("ensemble produced no window to pad")
    return out + [list(out[-1]) for _ in range(top_k - len(out))]


def fuse_reference(per_model: Sequence[Sequence[Window]], top_k: int = REFERENCE_TOP_K) -> list[list[float]]:
    """The reference's fusion of one query (see the module docstring); ``top_k`` ``[s, e]``."""
    top1 = [windows[0] for windows in per_model if windows]
    candidates = [list(w[:3]) for windows in per_model for w in windows[:REFERENCE_PER_MODEL]]
    candidates += cluster_top1(top1)
    kept = temporal_nms(candidates, REFERENCE_NMS_THRESHOLD, top_k)
    return pad_windows(kept, top_k)


def fuse_weighted(
    per_model: Sequence[Sequence[Window]],
    weights: Sequence[float] | None = None,
    top_k: int = REFERENCE_TOP_K,
    iou_threshold: float = 0.5,
) -> list[list[float]]:
    """1-D weighted box fusion of one query (see the module docstring); ``top_k`` ``[s, e]``."""
    weights = [1.0] * len(per_model) if weights is None else [float(w) for w in weights]
    entries = [
        (score * weights[m], m, start, end)
        for m, windows in enumerate(per_model)
        for start, end, score in (w[:3] for w in windows)
    ]
    entries.sort(key=lambda e: e[0], reverse=True)  # stable: ties keep model order
    clusters: list[dict] = []
    for wscore, model, start, end in entries:
        best, best_iou = None, -1.0
        for cluster in clusters:  # the most-overlapping cluster this model has not joined yet
            iou = span_iou(cluster["window"], (start, end))
            if model not in cluster["models"] and iou >= iou_threshold and iou > best_iou:
                best, best_iou = cluster, iou
        if best is None:
            best = {"models": set(), "members": []}
            clusters.append(best)
        best["models"].add(model)
        best["members"].append((wscore, start, end))
        total = sum(m[0] for m in best["members"])
        if total > 0:
            best["window"] = (
                sum(m[0] * m[1] for m in best["members"]) / total,
                sum(m[0] * m[2] for m in best["members"]) / total,
            )
        else:  # all weighted scores 0: plain average
            n = len(best["members"])
            best["window"] = (sum(m[1] for m in best["members"]) / n, sum(m[2] for m in best["members"]) / n)
    weight_sum = sum(weights) or 1.0
    ranked = sorted(clusters, key=lambda c: sum(m[0] for m in c["members"]) / weight_sum, reverse=True)
    return pad_windows([c["window"] for c in ranked], top_k)


def align_predictions(prediction_sets: Sequence[Sequence[dict]], names: Sequence[str]) -> list[tuple]:
    """Match records across files by ``(clip_uid, annotation_uid, query_idx)``, not position.

    Returns ``[(first file's record, [windows of model 0, model 1, ...]), ...]`` in the first
    file's order, windows as ``[start, end, score]``. A query missing from any file raises a
    DataError naming the file and the query.
    """
    def key(record: dict) -> tuple:
        return (record["clip_uid"], record["annotation_uid"], record["query_idx"])

    indexed = [{key(r): r for r in records} for records in prediction_sets]
    first_keys = [key(r) for r in prediction_sets[0]]
    first_set = set(first_keys)
    for by_key, name in zip(indexed[1:], names[1:]):
        extra = [k for k in by_key if k not in first_set]
        if extra:
            raise DataError(f"{names[0]}: lacks query {extra[0][1]}_{extra[0][2]} (clip {extra[0][0]}) "
                            f"that {name} has ({len(extra)} such queries)")
    aligned = []
    for k in first_keys:
        per_model = []
        for by_key, name in zip(indexed, names):
            record = by_key.get(k)
            if record is None:
                raise DataError(f"{name}: lacks query {k[1]}_{k[2]} (clip {k[0]})")
            scores = record.get("scores")
            if scores is None:
                raise DataError(f"{name}: query {k[1]}_{k[2]} has windows without scores; "
                                "ensembling needs prediction files with [start, end, score] rows")
            per_model.append([[s, e, sc] for (s, e), sc in zip(record["predicted_times"], scores)])
        aligned.append((indexed[0][k], per_model))
    return aligned


def ensemble_predictions(
    prediction_sets: Sequence[Sequence[dict]],
    names: Sequence[str],
    method: str = "reference",
    weights: Sequence[float] | None = None,
    top_k: int = REFERENCE_TOP_K,
) -> dict:
    """Fuse aligned prediction records (``load_prediction_file(..., require_scores=True)``)
    into a submission dict (records in the first file's order)."""
    from libs.evaluation.submission import SUBMISSION_CHALLENGE, SUBMISSION_VERSION

    if method not in ENSEMBLE_METHODS:
        raise DataError(f"unknown ensemble method {method!r}; expected one of {ENSEMBLE_METHODS}")
    if weights is not None:
        if method != "weighted":
            raise DataError("--weights only applies to --method weighted")
        if len(weights) != len(prediction_sets):
            raise DataError(f"got {len(weights)} weights for {len(prediction_sets)} prediction files")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise DataError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    results = []
    for record, per_model in align_predictions(prediction_sets, names):
        if method == "reference":
            times = fuse_reference(per_model, top_k)
        else:
            times = fuse_weighted(per_model, weights, top_k)
        results.append({
            "clip_uid": record["clip_uid"],
            "annotation_uid": record["annotation_uid"],
            "query_idx": record["query_idx"],
            "predicted_times": times,
        })
    return {"version": SUBMISSION_VERSION, "challenge": SUBMISSION_CHALLENGE, "results": results}
