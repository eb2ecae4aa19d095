"""Official NLQ json -> jsonl records, byte-exact writing, validated reading, the two CLIs."""
import copy
import json
import os
import shutil

import pytest

from libs.core.errors import DataError
from libs.datasets.annotations import (
    concat_jsonl, dumps_jsonl, format_summary, official_to_records, read_jsonl, write_jsonl)
from libs.utils.paths import REPO_ROOT
from tests.conftest import require_shared


def tiny_official():
    """Two clips, three annotations; one query without text (skipped, index still counts)."""
    return {"videos": [
        {"video_uid": "v1", "clips": [
            {"clip_uid": "clipA", "video_start_sec": 10.0, "video_end_sec": 490.0, "annotations": [
                {"annotation_uid": "annA", "language_queries": [
                    {"query": "where is the cup?", "clip_start_sec": 1.5, "clip_end_sec": 4.0},
                    {"clip_start_sec": 2.0, "clip_end_sec": 3.0},
                    {"query": "what did I cut \u00e9?", "clip_start_sec": 5, "clip_end_sec": 500.25},
                ]},
            ]},
        ]},
        {"video_uid": "v2", "clips": [
            {"clip_uid": "clipB", "video_start_sec": -0.5, "video_end_sec": 120.0, "annotations": [
                {"annotation_uid": "annB", "language_queries": [
                    {"query": "", "clip_start_sec": 0.0, "clip_end_sec": 1.0},
                    {"query": "who did I talk to", "clip_start_sec": 0.0, "clip_end_sec": 0.0},
                ]},
            ]},
        ]},
    ]}


def test_records_fields_order_ids_and_skips():
    records, summary = official_to_records(tiny_official(), "train", source="tiny.json")
    assert [list(r) for r in records] == [["query", "query_id", "duration", "video_id", "query_type", "timestamps"]] * 3
    assert [r["query_id"] for r in records] == ["annA_0", "annA_2", "annB_1"]  # index before skipping
    assert records[0] == {"query": "where is the cup?", "query_id": "annA_0", "duration": 480.0,
                          "video_id": "clipA", "query_type": "nlq", "timestamps": [[1.5, 4.0]]}
    assert records[1]["timestamps"] == [[5, 500.25]]  # past the clip, not clamped; int kept
    assert records[2]["duration"] == 120.5 and records[2]["timestamps"] == [[0.0, 0.0]]
    assert summary == {"split": "train", "source": "tiny.json", "clips": 2, "queries": 5, "written": 3,
                       "skipped": {"empty query": 2}}
    assert format_summary(summary).startswith("train: 3 written, 2 skipped (empty query: 2)")


def test_test_split_has_no_timestamps():
    data = tiny_official()
    for video in data["videos"]:
        for clip in video["clips"]:
            for ann in clip["annotations"]:
                for q in ann["language_queries"]:
                    q.pop("clip_start_sec"), q.pop("clip_end_sec")
    records, _ = official_to_records(data, "test")
    assert all("timestamps" not in r for r in records) and len(records) == 3


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("videos"), "<memory>: missing key 'videos'"),
    (lambda d: d["videos"][0]["clips"][0].pop("clip_uid"), r"videos\[0\].clips\[0\]: missing key 'clip_uid'"),
    (lambda d: d["videos"][0]["clips"][0].update(video_end_sec=5.0), "clip clipA: video_end_sec 5.0 must be >"),
    (lambda d: d["videos"][0]["clips"][0].update(video_start_sec="10"), "clip clipA: 'video_start_sec' must be a number"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0].pop("language_queries"),
     "clip clipA annotation annA: missing key 'language_queries'"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0].update(clip_end_sec=1.0),
     r"annotation annA language_queries\[0\]: clip_end_sec 1.0 must be >= clip_start_sec 1.5"),
    (lambda d: d["videos"][0]["clips"][0]["annotations"][0]["language_queries"][2].update(clip_start_sec=-1.0),
     r"language_queries\[2\]: 'clip_start_sec' must be >= 0"),
    (lambda d: d["videos"][1]["clips"][0]["annotations"][0]["language_queries"][1].pop("clip_end_sec"),
     r"annotation annB language_queries\[1\]: missing key 'clip_end_sec'"),
    (lambda d: d["videos"][1]["clips"][0]["annotations"][0]["language_queries"][1].update(clip_end_sec=True),
     "'clip_end_sec' must be a number"),
])
def test_malformed_official_json(edit, message):
    data = tiny_official()
    edit(data)
    with pytest.raises(DataError, match=message):
        official_to_records(data, "val")


def test_write_and_read_round_trip(tmp_path):
    records, _ = official_to_records(tiny_official(), "val")
    path = tmp_path / "out.jsonl"
    write_jsonl(records, str(path))
    raw = path.read_bytes()
    assert raw.count(b"\r\n") == 2 and not raw.endswith(b"\n")
    assert b'"query": "what did I cut \\u00e9?"' in raw  # json.dumps defaults (ASCII escapes)
    assert read_jsonl(str(path), require_timestamps=True) == records
    write_jsonl(records, str(path), line_ending="\n")
    assert path.read_bytes() == raw.replace(b"\r\n", b"\n")
    assert read_jsonl(str(path), require_timestamps=True) == records


def test_shipped_val_converts_byte_for_byte():
    official = require_shared("data", "ego4d_nlq_v2", "nlq_val.json")
    shipped = require_shared("data", "ego4d_nlq_v2", "ego4d_nlq_val_v2.jsonl")
    records, summary = official_to_records(json.load(open(official)), "val", source=official)
    assert summary["written"] == 4552 and summary["skipped"] == {"empty query": 2}
    assert summary["queries"] == 4554
    assert dumps_jsonl(records).encode() == open(shipped, "rb").read()


GOOD = {"query": "q?", "query_id": "a_0", "duration": 100.0, "video_id": "c", "query_type": "nlq",
        "timestamps": [[-0.5, 120.0]]}


def write_lines(tmp_path, records):
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records))
    return str(path)


def changed(**kw):
    record = copy.deepcopy(GOOD)
    for key, value in kw.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    return record


@pytest.mark.parametrize("bad, message", [
    ("{not json", ":2: not valid JSON"),
    (changed(query_id=None), ":2: 'query_id' must be a non-empty string"),
    (changed(query=None), ":2 \\(query_id a_0\\): needs a string 'query'"),
    (changed(duration=0), "'duration' must be a positive number"),
    (changed(query_type="vq"), "'query_type' must be one of"),
    (changed(timestamps=[[5.0, 4.0]]), "timestamp end 4.0 is before start 5.0"),
    (changed(timestamps=[5.0, 6.0]), "each timestamp must be \\[start, end\\]"),
    (changed(timestamps=None), ":2 \\(query_id a_0\\): missing 'timestamps'"),
    (changed(query_id="x_0", video_id=""), "'video_id' must be a non-empty string"),
])
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad, message):
    first = changed(query_id="x_1")
    path = write_lines(tmp_path, [first, bad])
    with pytest.raises(DataError, match=message) as err:
        read_jsonl(path, require_timestamps=True)
    assert path in str(err.value)


def test_read_jsonl_duplicates_types_and_optional_timestamps(tmp_path):
    path = write_lines(tmp_path, [GOOD, changed(query_id="b_0"), GOOD])
    with pytest.raises(DataError, match=r":3: duplicate query_id 'a_0' \(first on line 1\)"):
        read_jsonl(path, require_timestamps=False)
    narration = {"narration_query": "#C C opens a door", "query_id": "c_narrator-1_3", "duration": 480.0,
                 "video_id": "c", "query_type": "nlq_narration", "timestamps": [[1.0, 2.0]]}
    path = write_lines(tmp_path, [changed(timestamps=None), changed(query_id="n", query_type="narration"),
                                  narration, ""])
    records = read_jsonl(path, require_timestamps=False)
    assert len(records) == 3 and records[2]["query"] == "#C C opens a door"
    with pytest.raises(DataError, match="cannot read annotation file"):
        read_jsonl(str(tmp_path / "missing.jsonl"), require_timestamps=False)


def test_concat_and_duplicate_ids(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl([GOOD], str(a))
    write_jsonl([changed(query_id="b_0"), changed(query_id="b_1")], str(b))
    out = tmp_path / "ab.jsonl"
    assert concat_jsonl([str(a), str(b)], str(out)) == 3
    assert out.read_bytes() == a.read_bytes() + b"\r\n" + b.read_bytes()
    with pytest.raises(DataError, match="query_id 'a_0' is also in"):
        concat_jsonl([str(a), str(a)], str(tmp_path / "aa.jsonl"))


def run_script(script, args, capsys):
    import runpy
    import sys
    argv = sys.argv
    sys.argv = [script] + args
    try:
        with pytest.raises(SystemExit) as code:
            runpy.run_path(os.path.join(REPO_ROOT, script), run_name="__main__")
    finally:
        sys.argv = argv
    return code.value.code, capsys.readouterr()


def test_reformat_and_concat_cli(tmp_path, capsys):
    official = require_shared("data", "ego4d_nlq_v2", "nlq_val.json")
    shipped_val = require_shared("data", "ego4d_nlq_v2", "ego4d_nlq_val_v2.jsonl")
    shipped_train = require_shared("data", "ego4d_nlq_v2", "ego4d_nlq_train_v2.jsonl")
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copy(official, src / "nlq_val.json")
    code, printed = run_script("ego4d_data/reformat_data.py",
                               ["--input_file_dir", str(src), "--output_dir", str(out)], capsys)
    assert code == 0 and "val: 4552 written, 2 skipped (empty query: 2)" in printed.out
    assert (out / "ego4d_nlq_val_v2.jsonl").read_bytes() == open(shipped_val, "rb").read()
    assert sorted(os.listdir(out)) == ["ego4d_nlq_val_v2.jsonl"]

    shutil.copy(shipped_train, out / "ego4d_nlq_train_v2.jsonl")
    code, printed = run_script("ego4d_data/concat_json.py", ["--input_dir", str(out)], capsys)
    assert code == 0 and "18399 records" in printed.out
    merged = (out / "ego4d_nlq_train+val_v2.jsonl").read_bytes()
    assert merged == open(shipped_train, "rb").read() + b"\r\n" + open(shipped_val, "rb").read()


def test_cli_errors_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "nlq_train.json").write_text('{"videos": [{"clips": [{}]}]}')
    code, printed = run_script("ego4d_data/reformat_data.py", ["--input_file_dir", str(tmp_path)], capsys)
    assert code == 2 and "Traceback" not in printed.err
    assert printed.err.strip().count("\n") == 0 and "missing key 'clip_uid'" in printed.err
    assert "nlq_train.json" in printed.err
    code, printed = run_script("ego4d_data/concat_json.py", ["--input_dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "reformat_data.py first" in printed.err
