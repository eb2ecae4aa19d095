"""Narration pretraining annotations from a hand-made EgoClip file and split jsons."""
import json
import math
import os
import re
import runpy
import sys

import pytest

from ego4d_data_narration.narration_builder import (
    build_pretrain_records, drop_clips_without_features, narration_records, read_egoclip, unique_clips)
from libs.core.errors import DataError
from libs.datasets.annotations import read_jsonl, write_jsonl
from libs.datasets.ego4d import Ego4dDataset
from libs.utils.paths import REPO_ROOT

HEADER = ["video_uid", "video_dur", "narration_source", "narration_ind", "narration_time",
          "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun"]
ROWS = [
    # video v1: clip c1 spans [100, 200] of the video, clip c2 spans [300, 400]
    ["v1", "1000.0", "narration_pass_1", "0", "101.0", "100.5", "102.5", "#C C opens the door", "[1]", "[2]"],
    ["v1", "1000.0", "narration_pass_2", "7", "150.0", "149.0", "151.25", "#C C picks a cup", "[1]", "[2]"],
    ["v1", "1000.0", "narration_pass_1", "1", "100.0", "100.0", "101.0", "#C on the start edge", "[]", "[]"],
    ["v1", "1000.0", "narration_pass_1", "2", "199.5", "199.0", "200.0", "#C on the end edge", "[]", "[]"],
    ["v1", "1000.0", "narration_pass_1", "3", "350.0", "349.0", "351.0", "#C C washes a plate", "[]", "[]"],
    ["v1", "1000.0", "narration_pass_1", "4", "500.0", "499.0", "501.0", "#C outside every clip", "[]", "[]"],
    ["v2", "50.0", "narration_pass_2", "0", "10.0", "9.0", "11.0", "#C C runs", "[]", "[]"],
    ["v9", "50.0", "narration_pass_1", "0", "1.0", "0.5", "1.5", "#C no clip of this video", "[]", "[]"],
]


def write_egoclip(path, rows=ROWS, extra_lines=()):
    lines = ["\t".join(HEADER)] + ["\t".join(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def split_json(*clips):
    """clips: (video_uid, clip_uid, start, end)."""
    videos = {}
    for video_uid, clip_uid, start, end in clips:
        videos.setdefault(video_uid, []).append(
            {"clip_uid": clip_uid, "video_start_sec": start, "video_end_sec": end, "annotations": []})
    return {"videos": [{"video_uid": v, "clips": c} for v, c in videos.items()]}


NLQ = split_json(("v1", "c1", 100.0, 200.0), ("v2", "c3", 5.0, 45.0))
MQ = split_json(("v1", "c1", 100.0, 200.0), ("v1", "c2", 300.0, 400.0))


def run_builder(argv):
    saved = sys.argv
    sys.argv = ["create", *argv]
    try:
        with pytest.raises(SystemExit) as code:
            runpy.run_path(os.path.join(REPO_ROOT, "ego4d_data_narration", "create_pretrain_data_from_egoclip.py"),
                           run_name="__main__")
    finally:
        sys.argv = saved
    return code.value.code


def test_read_egoclip_groups_keeps_short_lines_and_skips_long_ones(tmp_path):
    """As pandas' ``error_bad_lines=False``: too many fields skip the line, too few leave fields empty."""
    long_line = "\t".join(ROWS[0] + ["one more"])
    path = write_egoclip(tmp_path / "egoclip.csv", extra_lines=["v1\t1000.0\tnarration_pass_1\t9", long_line])
    rows, stats = read_egoclip(path)
    assert stats == {"rows": 9, "bad_lines": 1}
    assert [r["narration_ind"] for r in rows["v1"]] == ["0", "7", "1", "2", "3", "4", "9"]
    assert rows["v2"][0]["clip_start"] == 9.0
    short = rows["v1"][-1]
    assert short["clip_text"] == "" and math.isnan(short["clip_start"]) and math.isnan(short["clip_end"])


def test_records_inside_clips_shifted_and_named(tmp_path):
    rows, _ = read_egoclip(write_egoclip(tmp_path / "egoclip.csv"))
    clips = unique_clips([("nlq.json", NLQ), ("mq.json", MQ)])
    assert [c["clip_uid"] for c in clips] == ["c1", "c3", "c2"]  # c1 once, first-seen order
    records, summary = narration_records(rows, clips)
    assert summary == {"clips": 3, "clips_without_narrations": 0, "records": 4, "dropped": {}}
    assert records[0] == {"narration_query": "#C C opens the door", "query_id": "c1_narrator-1_0",
                          "duration": 100.0, "video_id": "c1", "query_type": "narration",
                          "timestamps": [[0.5, 2.5]]}
    assert records[1]["query_id"] == "c1_narrator-2_7" and records[1]["timestamps"] == [[49.0, 51.25]]
    # strict bounds: rows starting at the clip start or ending at the clip end are left out
    assert [r["query_id"] for r in records[2:]] == ["c3_narrator-2_0", "c2_narrator-1_3"]
    assert records[2]["duration"] == 40.0 and records[2]["timestamps"] == [[4.0, 6.0]]
    assert records[3]["timestamps"] == [[49.0, 51.0]]
    reference_type, _ = narration_records(rows, clips, query_type="nlq_narration")
    assert {r["query_type"] for r in reference_type} == {"nlq_narration"}


def test_drop_clips_without_features():
    records = [{"video_id": v} for v in ("a", "b", "a", "c")]
    kept, dropped = drop_clips_without_features(records, {"a"})
    assert kept == [{"video_id": "a"}, {"video_id": "a"}] and dropped == {"b": 1, "c": 1}


def test_bad_inputs(tmp_path):
    rows, _ = read_egoclip(write_egoclip(tmp_path / "egoclip.csv"))
    with pytest.raises(DataError, match="nlq.json: videos\\[0\\].clips\\[0\\]: missing \\['video_end_sec'\\]"):
        unique_clips([("nlq.json", {"videos": [{"video_uid": "v", "clips": [
            {"clip_uid": "c", "video_start_sec": 0.0}]}]})])
    with pytest.raises(DataError, match="missing EgoClip columns \\['clip_text'\\]"):
        (tmp_path / "cols.csv").write_text("video_uid\tnarration_source\tnarration_ind\tclip_start\tclip_end\n")
        read_egoclip(str(tmp_path / "cols.csv"))
    bad_time = [list(ROWS[0])]
    bad_time[0][5] = "soon"
    with pytest.raises(DataError, match="t.csv:2: 'clip_start' must be a number"):
        read_egoclip(write_egoclip(tmp_path / "t.csv", bad_time))


def test_cli_writes_loadable_jsonl_and_reports_drops(tmp_path, capsys):
    egoclip = write_egoclip(tmp_path / "egoclip.csv")
    (tmp_path / "nlq_train.json").write_text(json.dumps(NLQ))
    (tmp_path / "moments_train.json").write_text(json.dumps(MQ))
    (tmp_path / "ids.txt").write_text("c1\nc2\n\n")
    out = tmp_path / "narr.jsonl"
    assert run_builder(["--egoclip", egoclip, "--split_files", str(tmp_path / "nlq_train.json"),
                        str(tmp_path / "moments_train.json"), "--available_clips", str(tmp_path / "ids.txt"),
                        "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropped 1 records of clip c3: no video features" in printed
    records = read_jsonl(str(out), require_timestamps=True)
    assert [r["query_id"] for r in records] == ["c1_narrator-1_0", "c1_narrator-2_7", "c2_narrator-1_3"]
    assert records[0]["query"] == "#C C opens the door"  # narration text exposed as the query


def test_build_with_feature_store_ids(tmp_path):
    egoclip = write_egoclip(tmp_path / "egoclip.csv")
    (tmp_path / "nlq.json").write_text(json.dumps(NLQ))
    lines = []
    records = build_pretrain_records(egoclip, [str(tmp_path / "nlq.json")], available={"c3"}, log=lines.append)
    assert [r["query_id"] for r in records] == ["c3_narrator-2_0"]
    assert lines[-1] == "kept 1 records; dropped 2 of 1 clips without features"


def test_cli_with_feature_store(tmp_path, capsys):
    np = pytest.importorskip("numpy")
    feature_store = pytest.importorskip("libs.datasets.feature_store")
    store = str(tmp_path / "video_feats")
    feature_store.write_store(store, [("c1", np.zeros((4, 3), dtype=np.float32))], kind="folder")
    (tmp_path / "nlq.json").write_text(json.dumps(NLQ))
    out = tmp_path / "narr.jsonl"
    assert run_builder(["--egoclip", write_egoclip(tmp_path / "egoclip.csv"), "--split-files",
                        str(tmp_path / "nlq.json"), "--video-feat-dir", store, "--output", str(out)]) == 0
    assert "dropped 1 records of clip c3" in capsys.readouterr().out
    assert [r["video_id"] for r in read_jsonl(str(out), require_timestamps=True)] == ["c1", "c1"]


EDGE_ROWS = [  # all inside clip c1 of video v1 ([100, 200])
    ["v1", "1000.0", "narration_pass_1", "10", "120.0", "120.0", "121.0", "", "[]", "[]"],  # empty
    ["v1", "1000.0", "narration_pass_1", "11", "121.0", "121.0", "122.0", "   ", "[]", "[]"],  # blank
    ["v1", "1000.0", "narration_pass_1", "12", "122.0", "125.0", "123.0", "#C backwards", "[]", "[]"],  # inverted
    ["v1", "1000.0", "narration_pass_3", "13", "123.0", "123.0", "124.0", "#C who said it", "[]", "[]"],
    ["v1", "1000.0", "narration_pass_1", "0", "124.0", "124.0", "125.0", "#C C opens it again", "[]", "[]"],  # repeated id
    ["v1", "1000.0", "narration_pass_2", "14", "126.0", "126.0", "126.0", "#C zero length", "[]", "[]"],  # kept
]


def test_every_written_record_loads_and_dropped_rows_are_counted_by_reason(tmp_path):
    egoclip = tmp_path / "egoclip.csv"
    write_egoclip(egoclip, ROWS + EDGE_ROWS, extra_lines=["v1\t1000.0\tnarration_pass_1\t15"])  # a short row
    egoclip.write_bytes(b"\xef\xbb\xbf" + egoclip.read_bytes())  # saved with a UTF-8 byte-order mark
    (tmp_path / "nlq.json").write_text(json.dumps(NLQ))
    lines = []
    records = build_pretrain_records(str(egoclip), [str(tmp_path / "nlq.json")], log=lines.append)
    assert [r["query_id"] for r in records] == ["c1_narrator-1_0", "c1_narrator-2_7", "c1_narrator-2_14",
                                                "c3_narrator-2_0"]
    assert lines[2:] == ["dropped 2 rows: empty narration", "dropped 1 rows: window ends before it starts",
                         "dropped 1 rows: unknown narration source", "dropped 1 rows: repeated query id"]
    out = tmp_path / "narr.jsonl"
    write_jsonl(records, str(out), line_ending="\n")
    dataset = Ego4dDataset(is_training=True, split=["train"], video_feat_dir=str(tmp_path), train_jsonl_file=str(out),
                           text_feat_dir=str(tmp_path), val_jsonl_file=None, json_file=None, feat_stride=16,
                           num_frames=16, default_fps=30, downsample_rate=1, max_seq_len=256, input_txt_dim=4,
                           input_vid_dim=4, num_classes=1, enable_temporal_jittering=False)
    assert len(dataset) == 4


def test_well_formed_rows_give_the_references_bytes(tmp_path, capsys):
    """The reference's script wrote ``"\\n".join(json.dumps(record))``: LF breaks, none at the end."""
    egoclip = write_egoclip(tmp_path / "egoclip.csv")
    (tmp_path / "nlq_train.json").write_text(json.dumps(NLQ))
    out = tmp_path / "narr.jsonl"
    assert run_builder(["--egoclip", egoclip, "--split_files", str(tmp_path / "nlq_train.json"), "--output", str(out),
                        "--query_type", "nlq_narration"]) == 0
    rows, _ = read_egoclip(egoclip)
    expected = []
    for clip_uid, video, start, end in (("c1", "v1", 100.0, 200.0), ("c3", "v2", 5.0, 45.0)):
        for row in rows[video]:
            if row["clip_start"] > start and row["clip_end"] < end:
                narrator = {"narration_pass_1": "narrator-1", "narration_pass_2": "narrator-2"}[row["narration_source"]]
                expected.append({"narration_query": row["clip_text"],
                                 "query_id": f"{clip_uid}_{narrator}_{row['narration_ind']}", "duration": end - start,
                                 "video_id": clip_uid, "query_type": "nlq_narration",
                                 "timestamps": [[row["clip_start"] - start, row["clip_end"] - start]]})
    assert out.read_bytes() == "\n".join(json.dumps(record) for record in expected).encode()


def test_an_egoclip_file_without_narrations_is_an_error(tmp_path):
    path = write_egoclip(tmp_path / "egoclip.csv", rows=[])
    with pytest.raises(DataError, match=f"^{re.escape(path)}: no narration rows after the header"):
        read_egoclip(path)
