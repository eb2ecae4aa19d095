"""Narrations as queries: the pretraining annotations built from EgoClip (spec section 3).

For every clip (unique ``clip_uid``) of the NLQ, MQ and VQ *train* splits, the EgoClip rows of the
same video that lie strictly inside the clip become one query each: the narration text, its short
EgoClip window shifted to clip time, ``query_id = "{clip_uid}_narrator-{1|2}_{narration_ind}"``.
Records keep the reference's layout (text in ``narration_query``; ``read_jsonl`` exposes it as
``query``), with ``query_type`` "narration" by default, which the dataset accepts (the reference
wrote "nlq_narration", which its own loader rejected). Clips without video features are dropped
afterwards, reporting each one, instead of the reference's hard-coded list of three ids.

Only records the pretraining dataset loads are written: a row with an empty or blank narration, a
window that ends before it starts, an unknown narration source or a query id seen before (the
first one is kept) is dropped and counted by reason, where one such row among EgoClip's millions
would otherwise stop pretraining (the reference wrote them; its loader then failed on them).
On well-formed rows the file equals the reference's byte for byte (LF line breaks, no final one)
apart from ``query_type``.
"""
from __future__ import annotations

import csv
import math
import numbers
from collections import Counter, defaultdict
from typing import Container, Iterable

from libs.core.errors import DataError
from libs.datasets.annotations import QUERY_TYPES, check_record, load_official_json

# EgoClip columns the builder reads (egoclip.csv has more)
EGOCLIP_COLUMNS = ("video_uid", "narration_source", "narration_ind", "clip_start", "clip_end", "clip_text")

# EgoClip narration pass -> the middle part of the query id
NARRATOR_OF_SOURCE = {"narration_pass_1": "narrator-1", "narration_pass_2": "narrator-2"}

# the reference's file names (ego4d_data_narration/README.md)
DEFAULT_SPLIT_FILES = ("nlq_train.json", "moments_train.json", "vq_train.json")


def read_egoclip(path: str) -> tuple[dict[str, list[dict]], dict]:
    """Read EgoClip's tab-separated metadata (UTF-8, with or without a byte-order mark), grouped by
    ``video_uid`` in file order.

    As the reference's ``pd.read_csv(..., error_bad_lines=False)``: lines with more fields than the
    header are skipped and counted; lines with fewer are kept, the missing fields empty (a missing
    time never lies inside a clip, a missing narration is dropped later). A file without any
    narration row is an error. Returns ``(rows_by_video, stats)``, each row holding the
    :data:`EGOCLIP_COLUMNS` with ``clip_start`` / ``clip_end`` as floats (NaN when missing).
    """
    rows_by_video: dict[str, list[dict]] = defaultdict(list)
    stats = {"rows": 0, "bad_lines": 0}
    try:
        f = open(path, "r", encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DataError(f"cannot read EgoClip metadata {path}: {e.strerror or e}") from e
    with f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file; expected EgoClip's tab-separated header")
        missing = [c for c in EGOCLIP_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing EgoClip columns {missing} (is it tab-separated egoclip.csv?)")
        index = {c: header.index(c) for c in EGOCLIP_COLUMNS}
        for fields in reader:
            if len(fields) > len(header):
                stats["bad_lines"] += 1
                continue
            fields += [""] * (len(header) - len(fields))
            row = {c: fields[i] for c, i in index.items()}
            where = f"{path}:{reader.line_num}"
            for key in ("clip_start", "clip_end"):
                try:
                    row[key] = float(row[key]) if row[key].strip() else math.nan
                except ValueError:
                    raise DataError(f"{where}: {key!r} must be a number of seconds, got {row[key]!r}") from None
            rows_by_video[row["video_uid"]].append(row)
            stats["rows"] += 1
    if stats["rows"] == 0:
        raise DataError(f"{path}: no narration rows after the header; expected EgoClip's metadata")
    return dict(rows_by_video), stats


def unique_clips(split_data: Iterable[tuple[str, dict]]) -> list[dict]:
    """``(source, official json)`` pairs -> unique clips in first-seen order.

    Each clip: ``video_uid``, ``clip_uid``, ``video_start_sec``, ``video_end_sec`` (the clip's
    bounds in its video). NLQ, MQ and VQ files share the ``videos[].clips[]`` layout.
    """
    clips: list[dict] = []
    seen: set[str] = set()
    for source, data in split_data:
        videos = data.get("videos") if isinstance(data, dict) else None
        if not isinstance(videos, list):
            raise DataError(f"{source}: expected a 'videos' list (an Ego4D NLQ/MQ/VQ split file)")
        for v_idx, video in enumerate(videos):
            for c_idx, clip in enumerate(video.get("clips", [])):
                where = f"{source}: videos[{v_idx}].clips[{c_idx}]"
                missing = [k for k in ("clip_uid", "video_start_sec", "video_end_sec") if k not in clip]
                if "video_uid" not in video:
                    missing.insert(0, "video_uid (of the video)")
                if missing:
                    raise DataError(f"{where}: missing {missing}")
                bounds = (clip["video_start_sec"], clip["video_end_sec"])
                if not all(isinstance(t, numbers.Real) and not isinstance(t, bool) for t in bounds):
                    raise DataError(f"{where}: video_start_sec / video_end_sec must be numbers, got {bounds}")
                if clip["video_end_sec"] <= clip["video_start_sec"]:
                    raise DataError(f"{where} (clip {clip['clip_uid']}): video_end_sec must be > video_start_sec")
                if clip["clip_uid"] in seen:
                    continue
                seen.add(clip["clip_uid"])
                clips.append({"video_uid": video["video_uid"], "clip_uid": clip["clip_uid"],
                              "video_start_sec": clip["video_start_sec"], "video_end_sec": clip["video_end_sec"]})
    return clips


DROP_REASONS = ("empty narration", "window ends before it starts", "unknown narration source",
                "repeated query id")


def narration_records(rows_by_video: dict[str, list[dict]], clips: list[dict],
                      query_type: str = "narration") -> tuple[list[dict], dict]:
    """One record per EgoClip row strictly inside a clip (``start > clip start``, ``end < clip end``).

    Times are shifted to the clip; ``duration`` is the clip length. Rows the pretraining dataset
    would refuse are left out and counted by reason (:data:`DROP_REASONS`). Returns
    ``(records, summary)``; ``summary["dropped"]`` maps each reason to its count.
    """
    if query_type not in QUERY_TYPES:
        raise DataError(f"query_type must be one of {list(QUERY_TYPES)}, got {query_type!r}")
    records: list[dict] = []
    dropped: Counter = Counter()
    seen_ids: set[str] = set()
    clips_without_narrations = 0
    for clip in clips:
        start, end = clip["video_start_sec"], clip["video_end_sec"]
        inside = [r for r in rows_by_video.get(clip["video_uid"], [])
                  if r["clip_start"] > start and r["clip_end"] < end]
        clips_without_narrations += not inside
        for row in inside:
            narrator = NARRATOR_OF_SOURCE.get(row["narration_source"])
            query_id = f"{clip['clip_uid']}_{narrator}_{row['narration_ind']}"
            reason = ("empty narration" if not row["clip_text"].strip()
                      else "window ends before it starts" if row["clip_end"] < row["clip_start"]
                      else "unknown narration source" if narrator is None
                      else "repeated query id" if query_id in seen_ids else None)
            if reason is not None:
                dropped[reason] += 1
                continue
            seen_ids.add(query_id)
            record = {
                "narration_query": row["clip_text"],
                "query_id": query_id,
                "duration": end - start,
                "video_id": clip["clip_uid"],
                "query_type": query_type,
                "timestamps": [[row["clip_start"] - start, row["clip_end"] - start]],
            }
            # the dataset's own check: a record it refuses here is a bug of this builder
            check_record(dict(record), f"EgoClip row of video {row['video_uid']}", require_timestamps=True)
            records.append(record)
    summary = {"clips": len(clips), "clips_without_narrations": clips_without_narrations,
               "records": len(records), "dropped": {r: dropped[r] for r in DROP_REASONS if dropped[r]}}
    return records, summary


def drop_clips_without_features(records: list[dict], available: Container[str]) -> tuple[list[dict], dict[str, int]]:
    """Keep records whose ``video_id`` is in ``available``; returns ``(kept, {dropped clip: count})``."""
    kept: list[dict] = []
    dropped: Counter = Counter()
    for record in records:
        if record["video_id"] in available:
            kept.append(record)
        else:
            dropped[record["video_id"]] += 1
    return kept, dict(dropped)


def build_pretrain_records(egoclip_path: str, split_paths: list[str], available: Container[str] | None = None,
                           query_type: str = "narration", log=print) -> list[dict]:
    """The whole pipeline: EgoClip + train splits -> records, minus clips without features."""
    rows_by_video, stats = read_egoclip(egoclip_path)
    log(f"EgoClip: {stats['rows']} rows of {len(rows_by_video)} videos from {egoclip_path}"
        f" ({stats['bad_lines']} malformed lines skipped)")
    clips = unique_clips((path, load_official_json(path)) for path in split_paths)
    records, summary = narration_records(rows_by_video, clips, query_type)
    log(f"narrations: {summary['records']} records from {summary['clips']} unique train clips "
        f"({summary['clips_without_narrations']} clips have no narration inside)")
    for reason, count in summary["dropped"].items():
        log(f"dropped {count} rows: {reason}")
    if available is not None:
        records, dropped = drop_clips_without_features(records, available)
        for clip_uid, count in sorted(dropped.items()):
            log(f"dropped {count} records of clip {clip_uid}: no video features")
        log(f"kept {len(records)} records; dropped {sum(dropped.values())} of {len(dropped)} clips without features")
    return records


def read_id_list(path: str) -> set[str]:
    """One id per line (blank lines ignored)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError as e:
        raise DataError(f"cannot read id list {path}: {e.strerror or e}") from e
