"""EvalAI submission writer/validator and reading saved prediction files."""
import json
import logging

import pytest
import torch

from libs.core.errors import DataError
from libs.evaluation.metrics import evaluate_predictions
from libs.evaluation.submission import (
    load_prediction_file,
    make_submission,
    read_prediction_file,
    save_predictions,
    validate_submission,
)

RECORDS = [  # converted jsonl records: the split's queries (one clip of 100 s, 3 queries)
    {"query": "q0", "query_id": "ann1_0", "duration": 100.0, "video_id": "clip1", "query_type": "nlq",
     "timestamps": [[10.0, 20.0]]},
    {"query": "q1", "query_id": "ann1_1", "duration": 100.0, "video_id": "clip1", "query_type": "nlq",
     "timestamps": [[30.0, 40.0]]},
    {"query": "q2", "query_id": "ann2_0", "duration": 100.0, "video_id": "clip1", "query_type": "nlq",
     "timestamps": [[50.0, 60.0]]},
]


def model_result(query_id, segments, scores):
    return {"video_id": "clip1", "query_id": query_id,
            "segments": torch.tensor(segments, dtype=torch.float32),  # (K, 2) seconds
            "scores": torch.tensor(scores), "labels": torch.zeros(len(scores), dtype=torch.int64)}


def full_results():
    return [
        model_result("ann1_0", [[10.0, 20.0], [0.0, 5.0]], [0.9, 0.2]),
        model_result("ann1_1", [[30.0, 40.0]] * 6, [0.8] * 6),
        model_result("ann2_0", [[-0.0, 60.0], [50.0, 60.0], [1, 2], [3, 4], [5, 6]], [0.7, 0.6, 0.5, 0.4, 0.3]),
    ]


def test_make_submission_pads_and_cuts_to_five():
    sub = make_submission(full_results())
    assert sub["version"] == "1.0" and sub["challenge"] == "ego4d_nlq_challenge"
    first = sub["results"][0]
    assert first == {"clip_uid": "clip1", "annotation_uid": "ann1", "query_idx": 0,
                     "predicted_times": [[10.0, 20.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]]}
    assert len(sub["results"][1]["predicted_times"]) == 5
    assert str(sub["results"][2]["predicted_times"][0][0]) == "0.0"  # -0.0 written as 0.0
    validate_submission(sub, RECORDS)


def check_error(sub, match, gt=RECORDS):
    with pytest.raises(DataError, match=match):
        validate_submission(sub, gt)


def test_validator_errors_name_the_offenders():
    sub = make_submission(full_results())
    missing = json.loads(json.dumps(sub))
    del missing["results"][1]
    check_error(missing, r"1 of 3 queries missing, e.g. ann1_1 \(clip clip1\)")
    four = json.loads(json.dumps(sub))
    four["results"][0]["predicted_times"].pop()
    check_error(four, "ann1_0 .* has 4 windows, expected 5")
    reversed_ = json.loads(json.dumps(sub))
    reversed_["results"][2]["predicted_times"][3] = [9.0, 8.0]
    check_error(reversed_, r"query ann2_0\).*predicted_times\[3\] ends before it starts")
    outside = json.loads(json.dumps(sub))
    outside["results"][0]["predicted_times"][1] = [90.0, 100.5]
    check_error(outside, r"ann1_0 .* window 1 \[90.0, 100.5\] outside \[0, 100.000\]")
    inside_tol = json.loads(json.dumps(sub))
    inside_tol["results"][0]["predicted_times"][1] = [-0.0005, 100.0005]
    validate_submission(inside_tol, RECORDS)
    unknown = json.loads(json.dumps(sub))
    unknown["results"][0]["annotation_uid"] = "ann9"
    check_error(unknown, "unknown annotation_uid 'ann9'")
    unknown["results"][0]["clip_uid"] = "clip9"
    check_error(unknown, "unknown clip_uid 'clip9'")
    version = dict(sub, version="2.0")
    check_error(version, "version must be '1.0'")
    challenge = dict(sub, challenge="ego4d_vq")
    check_error(challenge, "challenge must be 'ego4d_nlq_challenge'")


def test_non_strict_validation_only_warns(caplog):
    sub = make_submission(full_results()[:2])
    with caplog.at_level(logging.WARNING):
        validate_submission(sub, RECORDS, strict=False)
    assert "1 of 3 queries missing" in caplog.text


def test_save_predictions_keeps_all_windows_with_scores(tmp_path):
    path = str(tmp_path / "pred.json")
    save_predictions(full_results(), path)
    with open(path) as f:
        data = json.load(f)
    assert data["results"][1]["predicted_times"][5] == [30.0, 40.0, pytest.approx(0.8)]
    records = load_prediction_file(path, require_scores=True)
    assert records[0]["predicted_times"] == [[10.0, 20.0], [0.0, 5.0]]
    assert records[0]["scores"] == [pytest.approx(0.9), pytest.approx(0.2)]
    # scoring the saved file equals scoring the results directly
    assert evaluate_predictions(read_prediction_file(path, RECORDS), RECORDS) == evaluate_predictions(
        full_results(), RECORDS)


def write(tmp_path, obj, name="sub.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return str(path)


def test_read_prediction_file_official_semantics(tmp_path, caplog):
    results = [
        {"clip_uid": "clip1", "annotation_uid": "ann1", "query_idx": 0, "predicted_times": [[15.0, 15.0]]},
        {"clip_uid": "clip1", "annotation_uid": "ann2", "query_idx": 0, "predicted_times": [[50.0, 60.0, 0.3]]},
    ]
    path = write(tmp_path, {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results})
    with caplog.at_level(logging.WARNING):
        records = read_prediction_file(path, RECORDS)
    assert "1 of 3 queries have no prediction" in caplog.text
    m = evaluate_predictions(records, RECORDS)
    assert m["num_queries"] == 2 and m["R1@0.5"] == 50.0


@pytest.mark.parametrize("change, match", [
    ({"version": "0.9"}, "version must be '1.0'"),
    ({"challenge": "x"}, "challenge must be"),
    ({"record": {"clip_uid": "other"}}, "results\\[0\\]: unknown clip_uid 'other'"),
    ({"record": {"annotation_uid": "zzz"}}, "results\\[0\\]: unknown annotation_uid 'zzz'"),
    ({"record": {"query_idx": 7}}, "results\\[0\\]: query_idx 7 out of range"),
    ({"record": {"query_idx": "0"}}, "query_idx must be an integer"),
    ({"record": {"predicted_times": [[5.0, 4.0]]}}, "ends before it starts"),
    ({"record": {"predicted_times": []}}, "non-empty list"),
])
def test_read_prediction_file_refuses_what_would_be_misscored(tmp_path, change, match):
    record = {"clip_uid": "clip1", "annotation_uid": "ann1", "query_idx": 0, "predicted_times": [[1.0, 2.0]]}
    record.update(change.get("record", {}))
    sub = {"version": change.get("version", "1.0"), "challenge": change.get("challenge", "ego4d_nlq_challenge"),
           "results": [record]}
    path = write(tmp_path, sub)
    with pytest.raises(DataError, match=match) as info:
        read_prediction_file(path, RECORDS)
    assert path in str(info.value)


def test_duplicate_query_in_file_is_refused(tmp_path):
    record = {"clip_uid": "clip1", "annotation_uid": "ann1", "query_idx": 0, "predicted_times": [[1.0, 2.0]]}
    path = write(tmp_path, {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": [record, record]})
    with pytest.raises(DataError, match="ann1_0 .*more than once"):
        read_prediction_file(path, RECORDS)


def test_real_val_split_submission_validates_against_official_json():
    from tests.conftest import require_shared

    gt = require_shared("data", "ego4d_nlq_v2", "nlq_val.json")
    jsonl = require_shared("data", "ego4d_nlq_v2", "ego4d_nlq_val_v2.jsonl")
    with open(jsonl) as f:
        records = [json.loads(line) for line in f if line.strip()]
    results = []
    for r in records:  # the GT windows clamped to the clip, as the model's decoder clamps
        s, e = (min(max(t, 0.0), r["duration"]) for t in r["timestamps"][0])
        results.append({"video_id": r["video_id"], "query_id": r["query_id"], "segments": [[s, e]]})
    sub = make_submission(results)
    validate_submission(sub, gt)  # the 2 queries without text are not required
    validate_submission(sub, jsonl)
    del sub["results"][100]
    with pytest.raises(DataError, match="1 of 4552 queries missing"):
        validate_submission(sub, gt)
