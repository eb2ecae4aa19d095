"""Query annotations: the official Ego4D NLQ json (v2) <-> this project's jsonl records.

One record per language query (spec section 3), keys in this order:
``query, query_id, duration, video_id, query_type, timestamps`` (``timestamps`` absent on the
test split). Times are seconds relative to the clip and are never clamped: the reference keeps
windows that run past the clip, and so do we (a window wholly outside the clip is an error: no
feature could match it). Queries without text, whitespace included, are skipped. Narration records (pretraining) carry their text in
``narration_query``; :func:`read_jsonl` also exposes it as ``query`` so readers need one key.

The writer reproduces the reference's shipped files byte for byte (``json.dumps`` defaults, one
record per line, no line break after the last), so converted files can be diffed against them.
The shipped files separate lines with CRLF: the reference's ``save_jsonl`` joins with ``"\\n"``
in text mode, and the files were evidently written where text mode turns that into ``"\\r\\n"``.
We write CRLF by default for byte equality; every reader here (and ``json.loads``) accepts both.
"""
from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from typing import Any, Iterable

from libs.core.errors import DataError
from libs.utils.io import atomic_open

# query types a record may carry: NLQ annotations, and narrations used as queries for
# pretraining (the reference's builder wrote "nlq_narration", its loader accepted "narration")
QUERY_TYPES = ("nlq", "narration", "nlq_narration")

# official file name of each split, as distributed by Ego4D
OFFICIAL_SPLIT_FILES = {
    "train": "nlq_train.json",
    "val": "nlq_val.json",
    "test": "nlq_test_unannotated.json",
}

# line separator of the reference's shipped jsonl files (see the module docstring)
JSONL_LINE_ENDING = "\r\n"

# skip reason recorded in the summary when a query has no text (key absent, null, "" or only
# whitespace)
SKIP_EMPTY_QUERY = "empty query"


def _is_number(value: Any) -> bool:
    """A finite real number that is not a bool (JSON ``true`` must not pass as 1, nor ``NaN`` /
    ``Infinity``, which Python's json accepts, as a time)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _require(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(mapping).__name__}")
    if key not in mapping:
        raise DataError(f"{where}: missing key {key!r}")
    return mapping[key]


def _require_list(mapping: Any, key: str, where: str) -> list:
    value = _require(mapping, key, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _require_time(mapping: dict, key: str, where: str, allow_negative: bool) -> float:
    value = _require(mapping, key, where)
    if not _is_number(value):
        raise DataError(f"{where}: {key!r} must be a number of seconds, got {value!r}")
    if not allow_negative and value < 0:
        raise DataError(f"{where}: {key!r} must be >= 0, got {value!r}")
    return value


def official_to_records(data: dict, split: str, source: str = "<memory>") -> tuple[list[dict], dict]:
    """Convert one official NLQ json (already parsed) into jsonl records.

    ``split`` is "train", "val" or "test"; the test split has no ground truth, so its records
    get no ``timestamps``. ``query_id`` is ``"{annotation_uid}_{i}"`` with ``i`` the index in
    ``language_queries`` *before* skipping, so ids stay aligned with the official file.
    Returns ``(records, summary)``; the summary counts clips, queries seen, records written and
    skips by reason. Malformed input raises ``DataError`` naming ``source`` and the record.
    """
    if split not in OFFICIAL_SPLIT_FILES:
        raise DataError(f"{source}: unknown split {split!r}; expected one of {sorted(OFFICIAL_SPLIT_FILES)}")
    has_gt = split != "test"
    records: list[dict] = []
    skipped: Counter = Counter()
    first_seen: dict[str, str] = {}  # query_id -> where it was first seen
    num_clips = num_queries = 0

    for v_idx, video in enumerate(_require_list(data, "videos", source)):
        v_where = f"{source}: videos[{v_idx}]"
        for c_idx, clip in enumerate(_require_list(video, "clips", v_where)):
            where = f"{v_where}.clips[{c_idx}]"
            clip_uid = _require(clip, "clip_uid", where)
            if not isinstance(clip_uid, str) or not clip_uid:
                raise DataError(f"{where}: 'clip_uid' must be a non-empty string, got {clip_uid!r}")
            where = f"{source}: clip {clip_uid}"
            # clip bounds are video-relative and may be slightly negative (-0.012 s in val)
            start = _require_time(clip, "video_start_sec", where, allow_negative=True)
            end = _require_time(clip, "video_end_sec", where, allow_negative=True)
            if end <= start:
                raise DataError(f"{where}: video_end_sec {end!r} must be > video_start_sec {start!r}")
            num_clips += 1
            duration = end - start

            for a_idx, ann in enumerate(_require_list(clip, "annotations", where)):
                ann_uid = _require(ann, "annotation_uid", f"{where} annotations[{a_idx}]")
                if not isinstance(ann_uid, str) or not ann_uid:
                    raise DataError(f"{where} annotations[{a_idx}]: 'annotation_uid' must be a non-empty "
                                    f"string, got {ann_uid!r}")
                a_where = f"{where} annotation {ann_uid}"
                for q_idx, query in enumerate(_require_list(ann, "language_queries", a_where)):
                    num_queries += 1
                    q_where = f"{a_where} language_queries[{q_idx}]"
                    if not isinstance(query, dict):
                        raise DataError(f"{q_where}: expected a JSON object, got {type(query).__name__}")
                    text = query.get("query")
                    if not text or (isinstance(text, str) and not text.strip()):
                        skipped[SKIP_EMPTY_QUERY] += 1
                        continue
                    if not isinstance(text, str):
                        raise DataError(f"{q_where}: 'query' must be a string, got {text!r}")
                    query_id = f"{ann_uid}_{q_idx}"
                    if query_id in first_seen:
                        raise DataError(f"{q_where}: duplicate query_id {query_id!r} (annotation_uid "
                                        f"{ann_uid!r} appears twice; first in {first_seen[query_id]})")
                    first_seen[query_id] = f"clip {clip_uid}"
                    record = {
                        "query": text,
                        "query_id": query_id,
                        "duration": duration,
                        "video_id": clip_uid,
                        "query_type": "nlq",
                    }
                    if has_gt:
                        q_start = _require_time(query, "clip_start_sec", q_where, allow_negative=False)
                        q_end = _require_time(query, "clip_end_sec", q_where, allow_negative=False)
                        if q_end < q_start:
                            raise DataError(
                                f"{q_where}: clip_end_sec {q_end!r} must be >= clip_start_sec {q_start!r}")
                        if q_start > duration:
                            raise DataError(f"{q_where}: clip_start_sec {q_start!r} is after the clip's "
                                            f"end ({duration!r} s); expected a window inside the clip")
                        record["timestamps"] = [[q_start, q_end]]
                    records.append(record)

    summary = {
        "split": split,
        "source": source,
        "clips": num_clips,
        "queries": num_queries,
        "written": len(records),
        "skipped": dict(skipped),
    }
    return records, summary


def load_official_json(path: str) -> dict:
    """Parse an official NLQ json file; unreadable or invalid files raise ``DataError``."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise DataError(f"cannot read official annotation file {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e


def convert_official_file(path: str, split: str) -> tuple[list[dict], dict]:
    """:func:`official_to_records` on a file; errors name ``path``."""
    return official_to_records(load_official_json(path), split, source=path)


def format_summary(summary: dict) -> str:
    """One human-readable line, e.g. ``val: 4552 written, 2 skipped (empty query: 2) from ...``."""
    skipped = summary["skipped"]
    total = sum(skipped.values())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
    detail = f" ({reasons})" if reasons else ""
    return (f"{summary['split']}: {summary['written']} written, {total} skipped{detail}; "
            f"{summary['queries']} queries in {summary['clips']} clips from {summary['source']}")


def dumps_jsonl(records: Iterable[dict], line_ending: str = JSONL_LINE_ENDING) -> str:
    """The reference's jsonl text: ``json.dumps`` defaults, one record per line, none at the end."""
    return line_ending.join(json.dumps(record) for record in records)


def write_jsonl(records: Iterable[dict], path: str, line_ending: str = JSONL_LINE_ENDING) -> None:
    """Write records atomically, byte-identical to the reference's shipped files.

    ``line_ending="\\n"`` gives what the reference's script writes on Linux instead.
    """
    text = dumps_jsonl(records, line_ending)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def check_record(record: Any, where: str, require_timestamps: bool) -> dict:
    """Validate one parsed jsonl record; returns it with ``query`` filled from ``narration_query``."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("query_id", "video_id"):
        value = record.get(key)
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    where = f"{where} (query_id {record['query_id']})"
    text = record.get("query", record.get("narration_query"))
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: needs a string 'query' (or 'narration_query') with some text, got {text!r}")
    duration = record.get("duration")
    if not _is_number(duration) or duration <= 0:
        raise DataError(f"{where}: 'duration' must be a positive number of seconds, got {duration!r}")
    query_type = record.get("query_type")
    if query_type not in QUERY_TYPES:
        raise DataError(f"{where}: 'query_type' must be one of {list(QUERY_TYPES)}, got {query_type!r}")
    if "timestamps" not in record:
        if require_timestamps:
            raise DataError(f"{where}: missing 'timestamps' (ground truth is required for this split)")
    else:
        windows = record["timestamps"]
        if not isinstance(windows, list) or not windows:
            raise DataError(f"{where}: 'timestamps' must be a non-empty list of [start, end], got {windows!r}")
        for window in windows:
            if (not isinstance(window, list) or len(window) != 2
                    or not all(_is_number(t) for t in window)):
                raise DataError(f"{where}: each timestamp must be [start, end] in seconds, got {window!r}")
            if window[1] < window[0]:
                raise DataError(f"{where}: timestamp end {window[1]!r} is before start {window[0]!r}")
            if window[1] < 0 or window[0] > duration:
                raise DataError(f"{where}: timestamp {window!r} lies outside the clip [0, {duration!r}] s")
    if "query" not in record:
        record["query"] = text
    return record


def read_jsonl(path: str, require_timestamps: bool) -> list[dict]:
    """Read and validate a jsonl annotation file (training files need ``timestamps``).

    Blank lines are ignored. Errors name the file and the 1-based line. Windows that overlap the
    clip but start before 0 or end past it are allowed (the reference keeps them); windows wholly
    outside the clip, empty or whitespace-only queries and repeated query ids are errors.
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().split("\n")  # universal newlines: CRLF arrives as "\n"
    except OSError as e:
        raise DataError(f"cannot read annotation file {path}: {e.strerror or e}") from e
    records: list[dict] = []
    first_line_of: dict[str, int] = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from e
        record = check_record(record, where, require_timestamps)
        query_id = record["query_id"]
        if query_id in first_line_of:
            raise DataError(f"{where}: duplicate query_id {query_id!r} (first on line {first_line_of[query_id]})")
        first_line_of[query_id] = line_no
        records.append(record)
    return records


def concat_jsonl(in_paths: list[str], out_path: str) -> int:
    """Concatenate jsonl files in the given order (train then val); returns the record count.

    Every input is validated first, and a query id present in two inputs is an error (training
    on train+val must not see a query twice).
    """
    records: list[dict] = []
    origin: dict[str, str] = {}
    for path in in_paths:
        for record in read_jsonl(path, require_timestamps=True):
            query_id = record["query_id"]
            if query_id in origin:
                raise DataError(f"{path}: query_id {query_id!r} is also in {origin[query_id]}")
            origin[query_id] = path
            records.append(record)
    write_jsonl(records, out_path)
    return len(records)
