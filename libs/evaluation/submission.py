"""EvalAI submissions and prediction files: writing, validating and reading them back.

Two files share one layout, ``{"version": "1.0", "challenge": "ego4d_nlq_challenge",
"results": [{clip_uid, annotation_uid, query_idx, predicted_times}, ...]}``:

* the **submission** (what EvalAI takes): exactly ``top_k`` = 5 windows ``[start, end]`` per query;
* the **prediction file** (what we keep for scoring and ensembling): every window the model
  returned, each row ``[start, end, score]`` — the reference's ``--save`` layout, which the
  official evaluator also scores (it reads the first two columns).

Reading a saved file keeps the official semantics (fewer than K windows, zero-length windows and
absent queries are allowed) but refuses what the official evaluator would crash on or mis-score:
unknown ids, an out-of-range ``query_idx``, a window ending before it starts, a query given twice,
a wrong ``version`` / ``challenge``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Sequence, Union

from libs.core.errors import DataError
from libs.utils.io import save_json
from libs.evaluation.metrics import (
    GroundTruth,
    load_ground_truth,
    prediction_key,
    prediction_windows,
)

logger = logging.getLogger(__name__)

SUBMISSION_VERSION = "1.0"
SUBMISSION_CHALLENGE = "ego4d_nlq_challenge"
SUBMISSION_TOP_K = 5  # windows per query the challenge scores (R@1 and R@5)
BOUNDARY_TOLERANCE_S = 1e-3  # windows may leave [0, duration] by this much (float rounding)
MAX_LISTED_PROBLEMS = 5  # offenders named in one error message


def _clean(value: float) -> float:
    """Plain Python float, ``-0.0`` written as ``0.0``."""
    return float(value) + 0.0


def _scores_of(result: dict) -> list[float] | None:
    """Scores of a model result (``scores``) or of a record (third column / ``scores``)."""
    raw = result.get("scores")
    if raw is not None:
        if hasattr(raw, "detach"):
            raw = raw.detach().cpu().tolist()
        return [float(s) for s in raw]
    rows = result.get("predicted_times") or []
    if rows and all(len(row) >= 3 for row in rows):
        return [float(row[2]) for row in rows]
    return None


def _query_label(key: tuple) -> str:
    clip_uid, annotation_uid, query_idx = key
    return f"{annotation_uid}_{query_idx} (clip {clip_uid})"


def _raise_problems(problems: list[str], what: str) -> None:
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    raise DataError(f"{what}: {len(problems)} problem(s): {shown}{more}")


def result_to_record(result: dict) -> dict:
    """A model result or record -> ``{clip_uid, annotation_uid, query_idx}`` (ids only)."""
    clip_uid, annotation_uid, query_idx = prediction_key(result)
    return {"clip_uid": clip_uid, "annotation_uid": annotation_uid, "query_idx": int(query_idx)}


def make_submission(results: Sequence[dict], top_k: int = SUBMISSION_TOP_K) -> dict:
    """EvalAI submission from per-query results: the first ``top_k`` windows of each query,
    padded to exactly ``top_k`` by repeating the last window (as the reference's ensemble does).
    """
    records = []
    for result in results:
        record = result_to_record(result)
        windows = prediction_windows(result)[:top_k]  # (K, 2) seconds, best first
        if len(windows) == 0:
            raise DataError(f"query {_query_label(prediction_key(result))}: no predicted window to submit")
        times = [[_clean(s), _clean(e)] for s, e in windows]
        times += [list(times[-1]) for _ in range(top_k - len(times))]
        record["predicted_times"] = times
        records.append(record)
    return {"version": SUBMISSION_VERSION, "challenge": SUBMISSION_CHALLENGE, "results": records}


def save_predictions(results: Sequence[dict], path: str) -> None:
    """Write every window with its score (rows ``[start, end, score]``), atomically."""
    records = []
    for result in results:
        record = result_to_record(result)
        windows = prediction_windows(result)
        scores = _scores_of(result)
        if scores is not None and len(scores) == len(windows):
            record["predicted_times"] = [
                [_clean(s), _clean(e), float(sc)] for (s, e), sc in zip(windows, scores)
            ]
        else:
            record["predicted_times"] = [[_clean(s), _clean(e)] for s, e in windows]
        records.append(record)
    save_json({"version": SUBMISSION_VERSION, "challenge": SUBMISSION_CHALLENGE, "results": records}, path)


def _check_header(sub: Any, where: str) -> list:
    """Check version/challenge and return the list of result records."""
    if not isinstance(sub, dict):
        raise DataError(f"{where}: expected a JSON object with version, challenge and results")
    if sub.get("version") != SUBMISSION_VERSION:
        raise DataError(f"{where}: version must be {SUBMISSION_VERSION!r}, got {sub.get('version')!r}")
    if sub.get("challenge") != SUBMISSION_CHALLENGE:
        raise DataError(
            f"{where}: challenge must be {SUBMISSION_CHALLENGE!r}, got {sub.get('challenge')!r}"
        )
    results = sub.get("results")
    if isinstance(results, dict):  # the official evaluator accepts a dict of records too
        results = list(results.values())
    if not isinstance(results, list):
        raise DataError(f"{where}: 'results' must be a list of records")
    return results


def _check_record(record: Any, where: str, require_scores: bool) -> dict:
    """Structure of one record -> normalised record ``{ids, predicted_times [[s, e]], scores}``."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    for key in ("clip_uid", "annotation_uid", "query_idx", "predicted_times"):
        if key not in record:
            raise DataError(f"{where}: missing key {key!r}")
    label = f"{where} (query {record['annotation_uid']}_{record['query_idx']})"
    if not isinstance(record["query_idx"], int) or isinstance(record["query_idx"], bool):
        raise DataError(f"{label}: query_idx must be an integer, got {record['query_idx']!r}")
    rows = record["predicted_times"]
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{label}: predicted_times must be a non-empty list of [start, end] rows")
    windows, scores = [], []
    for j, row in enumerate(rows):
        ok = isinstance(row, list) and len(row) in (2, 3) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row
        )
        if not ok:
            raise DataError(f"{label}: predicted_times[{j}] must be [start, end] or [start, end, score] "
                            f"finite numbers, got {row!r}")
        if row[1] < row[0]:
            raise DataError(f"{label}: predicted_times[{j}] ends before it starts: {row!r}")
        windows.append([float(row[0]), float(row[1])])
        scores.append(float(row[2]) if len(row) == 3 else None)
    has_scores = all(s is not None for s in scores)
    if require_scores and not has_scores:
        raise DataError(f"{label}: every window needs a score ([start, end, score] rows)")
    return {
        "clip_uid": record["clip_uid"],
        "annotation_uid": record["annotation_uid"],
        "query_idx": record["query_idx"],
        "predicted_times": windows,
        "scores": scores if has_scores else None,
    }


def load_prediction_file(path: str, require_scores: bool = False) -> list[dict]:
    """Read a submission or prediction file, checking its structure (no GT needed).

    Returns normalised records ``{clip_uid, annotation_uid, query_idx, predicted_times
    [[s, e], ...], scores [..] | None}``. A query given twice raises a DataError.
    """
    if not os.path.isfile(path):
        raise DataError(f"prediction file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    records, seen = [], set()
    for i, raw in enumerate(_check_header(data, path)):
        record = _check_record(raw, f"{path} results[{i}]", require_scores)
        key = prediction_key(record)
        if key in seen:
            raise DataError(f"{path} results[{i}]: query {_query_label(key)} is given more than once")
        seen.add(key)
        records.append(record)
    return records


def missing_queries(records: Sequence[dict], gt: GroundTruth) -> list[tuple]:
    """Queries of the split (``gt.expected``) without a record, in GT order."""
    present = {prediction_key(r) for r in records}
    return [key for key in gt.expected if key not in present]


def read_prediction_file(path: str, gt: Union[str, dict, list, GroundTruth]) -> list[dict]:
    """Read a saved submission/prediction file for scoring with the official semantics.

    Unknown clip or annotation ids and out-of-range ``query_idx`` raise a DataError naming the
    file and the record; absent queries are allowed (not scored) and counted in a warning.
    """
    gt = load_ground_truth(gt)
    records = load_prediction_file(path)
    for i, record in enumerate(records):
        gt.check_key(prediction_key(record), f"{path} results[{i}]")
    absent = missing_queries(records, gt)
    if absent:
        logger.warning(
            "%s: %d of %d queries have no prediction and are not scored (official semantics); "
            "first: %s", path, len(absent), len(gt.expected), _query_label(absent[0]),
        )
    return records


def validate_submission(
    sub: dict,
    records_or_gt: Union[str, dict, list, GroundTruth],
    strict: bool = True,
    top_k: int = SUBMISSION_TOP_K,
) -> None:
    """Check a submission dict against the split before it is written or uploaded.

    Always errors: wrong version/challenge, malformed records, unknown ids, duplicates, a window
    ending before it starts. With ``strict`` also errors (otherwise warnings): a query of the split
    missing, not exactly ``top_k`` windows, a window outside ``[0, duration]`` by more than 1e-3 s.
    The DataError lists the first few offenders by query id.
    """
    gt = load_ground_truth(records_or_gt)
    where = "submission"
    records = [_check_record(r, f"{where} results[{i}]", False) for i, r in enumerate(_check_header(sub, where))]
    fatal: list[str] = []
    soft: list[str] = []
    seen: set = set()
    for i, record in enumerate(records):
        key = prediction_key(record)
        try:
            gt.check_key(key, f"results[{i}]")
        except DataError as err:
            fatal.append(str(err))
            continue
        if key in seen:
            fatal.append(f"query {_query_label(key)} given more than once")
        seen.add(key)
        windows = record["predicted_times"]
        if len(windows) != top_k:
            soft.append(f"query {_query_label(key)} has {len(windows)} windows, expected {top_k}")
        duration = gt.durations[key[0]]
        for j, (start, end) in enumerate(windows):
            if start < -BOUNDARY_TOLERANCE_S or end > duration + BOUNDARY_TOLERANCE_S:
                soft.append(
                    f"query {_query_label(key)} window {j} [{start}, {end}] outside [0, {duration:.3f}]"
                )
                break
    if fatal:
        _raise_problems(fatal, f"{where} vs {gt.source}")
    absent = [k for k in gt.expected if k not in seen]
    if absent:
        soft.insert(0, f"{len(absent)} of {len(gt.expected)} queries missing, e.g. "
                       + ", ".join(_query_label(k) for k in absent[:MAX_LISTED_PROBLEMS]))
    if soft:
        if strict:
            _raise_problems(soft, f"{where} vs {gt.source}")
        for problem in soft:
            logger.warning("%s vs %s: %s", where, gt.source, problem)
