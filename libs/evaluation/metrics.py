"""The official Ego4D NLQ metric: Recall@K at temporal IoU thresholds, and mIoU.

Semantics follow the official evaluator (spec section 9), so numbers are comparable with the
leaderboard and the paper:

* ground truth is indexed by ``(clip_uid, annotation_uid, query_idx)``; one window per query;
* IoU uses the *span* as union, ``union = max(0, max(ends) - min(starts))`` (equal to the true
  union whenever the windows overlap); ``0 / 0`` is a miss;
* ``hit(K, th)`` is true when any of the first K predicted windows has ``IoU > th`` (strict: an
  IoU exactly at the threshold is a miss); fewer than K windows are allowed;
* ``R@K,th`` is the mean hit over the *evaluated* queries (absent queries are not counted, as the
  official evaluator does); ``mIoU`` is the mean IoU of the top-1 window (``0 / 0`` counts as 0).

Everything is vectorised over queries with NumPy: the 4,552 val queries score in milliseconds.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence, Union

import numpy as np

from libs.core.errors import DataError

DEFAULT_KS = (1, 5, 10)
DEFAULT_THRESHOLDS = (0.3, 0.5)

QueryKey = tuple  # (clip_uid: str, annotation_uid: str, query_idx: int)


def metric_name(k: int, threshold: float) -> str:
    """Key of one recall value in the metrics dict, e.g. ``R1@0.5``."""
    return f"R{k}@{threshold:g}"


def split_query_id(query_id: str) -> tuple[str, int]:
    """``"{annotation_uid}_{query_idx}"`` -> ``(annotation_uid, query_idx)``.

    Splits at the *last* underscore (the reference splits at the first, which would break on an
    annotation id containing one).
    """
    head, sep, tail = str(query_id).rpartition("_")
    if not sep or not head or not tail.isdigit():
        raise DataError(
            f"query_id {query_id!r}: expected '<annotation_uid>_<query index>' "
            "(e.g. '95441b96-..._3')"
        )
    return head, int(tail)


@dataclass
class GroundTruth:
    """NLQ annotations indexed for scoring and for checking submissions.

    ``windows[key]`` is the GT window in seconds, or None when the split has no GT (test).
    ``num_queries[(clip_uid, annotation_uid)]`` is the number of language queries of an
    annotation (the valid range of ``query_idx``). ``expected`` lists, in file order, the queries
    a submission must answer: those with non-empty text (the reformatter skips the others, so
    models never see them; val: 4,552 of 4,554).
    """

    source: str
    windows: dict = field(default_factory=dict)
    num_queries: dict = field(default_factory=dict)
    durations: dict = field(default_factory=dict)
    expected: list = field(default_factory=list)

    @property
    def num_gt_queries(self) -> int:
        """All language queries of the file (the official evaluator's denominator in its print)."""
        return len(self.windows)

    def check_key(self, key: QueryKey, where: str) -> None:
        """Raise a DataError naming ``where`` unless ``key`` is a query of this split."""
        clip_uid, annotation_uid, query_idx = key
        if clip_uid not in self.durations:
            raise DataError(f"{where}: unknown clip_uid {clip_uid!r} (not in {self.source})")
        count = self.num_queries.get((clip_uid, annotation_uid))
        if count is None:
            raise DataError(
                f"{where}: unknown annotation_uid {annotation_uid!r} for clip {clip_uid!r} "
                f"(not in {self.source})"
            )
        if isinstance(query_idx, bool) or not isinstance(query_idx, (int, np.integer)):
            raise DataError(f"{where}: query_idx must be an integer, got {query_idx!r}")
        if not 0 <= query_idx < count:
            raise DataError(
                f"{where}: query_idx {query_idx} out of range for annotation {annotation_uid!r} "
                f"(it has {count} queries in {self.source})"
            )
        if key not in self.windows:
            raise DataError(f"{where}: query {query_idx} of annotation {annotation_uid!r} is not in {self.source}")


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise DataError(f"{where}: missing key {key!r}")
    return mapping[key]


def _from_official(data: dict, source: str) -> GroundTruth:
    """Index the official NLQ json (``videos[].clips[].annotations[].language_queries[]``)."""
    gt = GroundTruth(source=source)
    for video in data["videos"]:
        video_uid = video.get("video_uid") if isinstance(video, dict) else None
        for clip in _require(video, "clips", f"{source} video {video_uid!r}"):
            clip_uid = _require(clip, "clip_uid", f"{source} clip")
            where = f"{source} clip {clip_uid!r}"
            gt.durations[clip_uid] = float(_require(clip, "video_end_sec", where)) - float(
                _require(clip, "video_start_sec", where)
            )
            for ann in _require(clip, "annotations", where):
                annotation_uid = _require(ann, "annotation_uid", where)
                queries = _require(ann, "language_queries", f"{where} annotation {annotation_uid!r}")
                gt.num_queries[(clip_uid, annotation_uid)] = len(queries)
                for idx, query in enumerate(queries):
                    key = (clip_uid, annotation_uid, idx)
                    if "clip_start_sec" in query and "clip_end_sec" in query:
                        gt.windows[key] = (float(query["clip_start_sec"]), float(query["clip_end_sec"]))
                    else:
                        gt.windows[key] = None
                    if isinstance(query.get("query"), str) and query["query"].strip():
                        gt.expected.append(key)
    return gt


def _from_records(records: Iterable[dict], source: str) -> GroundTruth:
    """Index converted jsonl records (``query_id``, ``video_id``, ``duration``, ``timestamps``)."""
    gt = GroundTruth(source=source)
    for line_no, record in enumerate(records, start=1):
        where = f"{source} record {line_no}"
        clip_uid = _require(record, "video_id", where)
        annotation_uid, idx = split_query_id(_require(record, "query_id", where))
        key = (clip_uid, annotation_uid, idx)
        timestamps = record.get("timestamps")
        gt.windows[key] = (float(timestamps[0][0]), float(timestamps[0][1])) if timestamps else None
        gt.durations[clip_uid] = float(_require(record, "duration", where))
        ann = (clip_uid, annotation_uid)
        gt.num_queries[ann] = max(gt.num_queries.get(ann, 0), idx + 1)
        gt.expected.append(key)
    return gt


def read_ground_truth_file(path: str) -> Any:
    """The parsed official json (a dict) or jsonl records (a list) at ``path``, unvalidated."""
    if not os.path.isfile(path):
        raise DataError(f"ground-truth file not found: {path}")
    try:
        with open(path) as f:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def load_ground_truth(gt: Union[str, dict, list, GroundTruth]) -> GroundTruth:
    """Index GT from the official json (path or dict) or from jsonl records (path or list)."""
    if isinstance(gt, GroundTruth):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        path = os.fspath(gt)
        return load_ground_truth_data(read_ground_truth_file(path), path)
    return load_ground_truth_data(gt, "<ground truth in memory>")


def load_ground_truth_data(data: Any, source: str) -> GroundTruth:
    """Index already-parsed GT: an official dict (has ``videos``) or a list of records."""
    if isinstance(data, dict) and "videos" in data:
        return _from_official(data, source)
    if isinstance(data, list):
        return _from_records(data, source)
    raise DataError(
        f"{source}: expected the official NLQ json (a dict with 'videos') or a list of jsonl records"
    )


def _as_array(value: Any, where: str) -> np.ndarray:
    """Tensor / array / nested list of numbers -> float64 NumPy array (tensors move to the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except ValueError:  # ragged rows
        raise DataError(f"{where}: windows must be rows [start, end(, score)] of equal length") from None
    if array.size and array.dtype.kind not in "iuf":
        raise DataError(f"{where}: windows must be numbers, got {array.dtype} values {value!r}")
    return array.astype(np.float64)


def prediction_key(result: dict) -> QueryKey:
    """``(clip_uid, annotation_uid, query_idx)`` of a model result or a submission record."""
    if "clip_uid" in result:
        return (result["clip_uid"], result.get("annotation_uid"), result.get("query_idx"))
    if "video_id" in result and "query_id" in result:
        annotation_uid, idx = split_query_id(result["query_id"])
        return (result["video_id"], annotation_uid, idx)
    raise DataError(
        "prediction: expected a model result (video_id, query_id, segments) or a submission "
        f"record (clip_uid, annotation_uid, query_idx, predicted_times); got keys {sorted(result)}"
    )


def prediction_windows(result: dict) -> np.ndarray:
    """The predicted windows of one result, ``(K, 2)`` float64 seconds, best first."""
    raw = result["segments"] if "segments" in result else result.get("predicted_times", [])
    where = f"prediction {prediction_key(result)}"
    windows = _as_array(raw, where)
    if windows.size == 0:
        return np.zeros((0, 2))
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise DataError(f"{where}: windows must be rows [start, end(, score)], got shape {windows.shape}")
    return windows[:, :2]  # (K, 2); a third column (score) is ignored, as officially


def temporal_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Official IoU of broadcastable ``(..., 2)`` windows; NaN where ``0 / 0`` (or NaN input)."""
    inter = np.maximum(0.0, np.minimum(pred[..., 1], gt[..., 1]) - np.maximum(pred[..., 0], gt[..., 0]))
    union = np.maximum(0.0, np.maximum(pred[..., 1], gt[..., 1]) - np.minimum(pred[..., 0], gt[..., 0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def evaluate_predictions(
    results: Sequence[dict],
    gt: Union[str, dict, list, GroundTruth],
    ks: Sequence[int] = DEFAULT_KS,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict:
    """Official Recall@K,IoU>th and mIoU (percentages) of per-query results.

    ``results``: model result dicts (``video_id, query_id, segments (K, 2)``) or submission
    records (``clip_uid, annotation_uid, query_idx, predicted_times``), windows best first.
    Returns ``{"R1@0.3": .., ..., "mIoU": .., "num_queries": n}`` (n = evaluated queries).
    A query unknown to the GT, a query without a GT window, or a query given twice raises a
    DataError (the official evaluator would crash or count it twice).
    """
    gt = load_ground_truth(gt)
    ks = [int(k) for k in ks]
    if not results:
        raise DataError(f"no predictions to evaluate against {gt.source}")
    k_max = max(ks)
    num = len(results)
    pred = np.full((num, k_max, 2), np.nan)  # (Q, K_max, 2) seconds; NaN = no window
    target = np.empty((num, 1, 2))  # (Q, 1, 2) seconds
    seen: set = set()
    for row, result in enumerate(results):
        key = prediction_key(result)
        where = f"prediction for query {key}"
        gt.check_key(key, where)
        if key in seen:
            raise DataError(f"{where}: given more than once")
        seen.add(key)
        window = gt.windows[key]
        if window is None:
            raise DataError(f"{where}: {gt.source} has no ground-truth window for it (test split?)")
        target[row, 0] = window
        windows = prediction_windows(result)[:k_max]
        pred[row, : len(windows)] = windows
    iou = temporal_iou(pred, target)  # (Q, K_max), NaN for absent windows and 0/0
    metrics: dict = {}
    for k in ks:
        for th in thresholds:
            hits = (iou[:, :k] > th).any(axis=1)  # NaN > th is False: a miss
            metrics[metric_name(k, th)] = float(hits.mean() * 100.0)
    metrics["mIoU"] = float(np.nan_to_num(iou[:, 0], nan=0.0).mean() * 100.0)
    metrics["num_queries"] = num
    return metrics


def windows_per_query(results: Sequence[dict]) -> int:
    """The most windows any result holds (``test_cfg.max_seg_num`` for a model's results)."""
    return max((len(prediction_windows(r)) for r in results), default=0)


def informative_ks(ks: Sequence[int], windows: int | None) -> list[int]:
    """The K's of ``ks`` whose recall can differ from the K before: with 5 windows per query,
    R@10 repeats R@5 and is not worth printing. ``windows`` None: all of ``ks``."""
    ks = sorted(int(k) for k in ks)
    if windows is None:
        return ks
    return [k for i, k in enumerate(ks) if i == 0 or windows > ks[i - 1]]


def format_metrics_table(
    metrics: dict,
    ks: Sequence[int] = DEFAULT_KS,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    title: str | None = None,
    windows: int | None = None,
) -> str:
    """Plain ASCII table of the recall values (K-major, as the reference prints) and mIoU.

    ``windows``: the windows per query the results held (``windows_per_query``); a K that can
    only repeat the K before it is left out of the table (still in ``metrics``)."""
    names = [metric_name(k, th) for k in informative_ks(ks, windows) for th in thresholds] + ["mIoU"]
    names = [n for n in names if n in metrics]
    cells = [f"{metrics[n]:.2f}" for n in names]  # NaN prints as "nan"
    widths = [max(len(n), len(c)) + 2 for n, c in zip(names, cells)]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    header = "|" + "|".join(n.center(w) for n, w in zip(names, widths)) + "|"
    values = "|" + "|".join(c.center(w) for c, w in zip(cells, widths)) + "|"
    lines = [rule, header, rule, values, rule]
    if title:
        lines.insert(0, title)
    return "\n".join(lines)
