"""Official Ego4D NLQ recall and mIoU: hand-computed cases and a brute-force re-statement."""
import json
import random
import re
import warnings

import numpy as np
import pytest
import torch

from libs.core.errors import DataError
from libs.evaluation.metrics import (
    evaluate_predictions,
    format_metrics_table,
    informative_ks,
    load_ground_truth,
    prediction_windows,
    split_query_id,
    temporal_iou,
    windows_per_query,
)
from tests.conftest import require_shared


def make_gt(windows_by_annotation, duration=100.0, clip_uid="clip1"):
    """Official-format GT for one clip: {annotation_uid: [(start, end) | (start, end, text)]}."""
    annotations = []
    for ann, queries in windows_by_annotation.items():
        lqs = []
        for q in queries:
            text = q[2] if len(q) > 2 else "where is it?"
            lqs.append({"clip_start_sec": q[0], "clip_end_sec": q[1], "query": text})
        annotations.append({"annotation_uid": ann, "language_queries": lqs})
    clip = {"clip_uid": clip_uid, "video_start_sec": 0.0, "video_end_sec": duration, "annotations": annotations}
    return {"version": "2.0", "videos": [{"video_uid": "v1", "clips": [clip]}]}


def rec(ann, idx, times, clip="clip1"):
    return {"clip_uid": clip, "annotation_uid": ann, "query_idx": idx, "predicted_times": times}


def official_restatement(predictions, gt_dict, thresholds, ks):
    """The official evaluator's loop, one query at a time, in plain Python."""
    index = {}
    for video in gt_dict["videos"]:
        for clip in video["clips"]:
            for ann in clip["annotations"]:
                index[(clip["clip_uid"], ann["annotation_uid"])] = ann
    hits = {(k, th): [] for k in ks for th in thresholds}
    top1 = []
    for p in predictions:
        q = index[(p["clip_uid"], p["annotation_uid"])]["language_queries"][p["query_idx"]]
        gs, ge = q["clip_start_sec"], q["clip_end_sec"]
        ious = []
        for s, e in (w[:2] for w in p["predicted_times"]):
            inter = max(0.0, min(e, ge) - max(s, gs))
            union = max(0.0, max(e, ge) - min(s, gs))
            ious.append(inter / union if union > 0 else float("nan"))
        top1.append(0.0 if np.isnan(ious[0]) else ious[0])
        for k in ks:
            for th in thresholds:
                hits[(k, th)].append(any(i > th for i in ious[:k]))
    out = {f"R{k}@{th:g}": 100.0 * np.mean(v) for (k, th), v in hits.items()}
    out["mIoU"] = 100.0 * np.mean(top1)
    return out


def test_iou_exactly_at_threshold_is_a_miss():
    gt = make_gt({"a": [(0.0, 10.0), (0.0, 10.0)]})
    # IoU([0,3],[0,10]) = 0.3 exactly; IoU([0,5],[0,10]) = 0.5 exactly
    m = evaluate_predictions([rec("a", 0, [[0.0, 3.0]]), rec("a", 1, [[0.0, 5.0]])], gt)
    assert m["R1@0.3"] == 50.0  # only the 0.5 one is > 0.3
    assert m["R1@0.5"] == 0.0
    assert m["mIoU"] == pytest.approx(40.0)
    assert m["num_queries"] == 2


def test_recall_at_k_with_fewer_windows_and_top1_miou():
    gt = make_gt({"a": [(10.0, 20.0), (50.0, 60.0)]})
    preds = [
        # top-1 misses (IoU 0), second window hits exactly: R1 miss, R5 hit
        rec("a", 0, [[30.0, 40.0], [10.0, 20.0]]),
        # a single window [52, 60] against [50, 60]: IoU 0.8
        rec("a", 1, [[52.0, 60.0]]),
    ]
    m = evaluate_predictions(preds, gt)
    assert m["R1@0.3"] == 50.0 and m["R1@0.5"] == 50.0
    assert m["R5@0.3"] == 100.0 and m["R10@0.5"] == 100.0
    assert m["mIoU"] == pytest.approx((0.0 + 0.8) / 2 * 100)


def test_only_first_k_windows_count():
    gt = make_gt({"a": [(10.0, 20.0)]})
    windows = [[80.0, 90.0]] * 5 + [[10.0, 20.0]]  # the hit is the 6th window
    m = evaluate_predictions([rec("a", 0, windows)], gt)
    assert m["R5@0.5"] == 0.0 and m["R10@0.5"] == 100.0


def test_zero_length_windows_and_zero_over_zero():
    gt = make_gt({"a": [(0.0, 10.0), (5.0, 5.0)]})
    preds = [
        rec("a", 0, [[5.0, 5.0], [0.0, 10.0]]),  # zero-length inside GT: IoU 0, then a hit
        rec("a", 1, [[5.0, 5.0]]),  # zero-length GT and prediction at one point: 0/0 -> miss
    ]
    m = evaluate_predictions(preds, gt, ks=(1, 5), thresholds=(0.0, 0.5))
    assert m["R1@0"] == 0.0  # IoU 0 is not > 0; NaN is not > 0
    assert m["R5@0.5"] == 50.0
    assert m["mIoU"] == 0.0
    assert np.isnan(temporal_iou(np.array([5.0, 5.0]), np.array([5.0, 5.0])))


def test_span_union_for_disjoint_windows():
    # disjoint: inter 0, union = span (not the sum of lengths); IoU 0 either way
    assert temporal_iou(np.array([0.0, 1.0]), np.array([3.0, 4.0])) == 0.0
    # overlapping: span equals the true union
    assert temporal_iou(np.array([0.0, 4.0]), np.array([2.0, 6.0])) == pytest.approx(2.0 / 6.0)


def test_absent_queries_are_not_counted():
    gt = make_gt({"a": [(10.0, 20.0), (30.0, 40.0), (50.0, 60.0)]})
    m = evaluate_predictions([rec("a", 2, [[50.0, 60.0]])], gt)
    assert m["num_queries"] == 1 and m["R1@0.5"] == 100.0


def test_model_results_with_tensors():
    gt = make_gt({"a": [(10.0, 20.0)]})
    result = {
        "video_id": "clip1",
        "query_id": "a_0",
        "segments": torch.tensor([[10.0, 16.0], [10.0, 20.0]]),  # (K, 2) seconds
        "scores": torch.tensor([0.9, 0.5]),
        "labels": torch.zeros(2, dtype=torch.int64),
    }
    m = evaluate_predictions([result], gt)
    assert m["R1@0.5"] == 100.0 and m["mIoU"] == pytest.approx(60.0)


def test_bad_predictions_raise_data_errors():
    gt = make_gt({"a": [(10.0, 20.0)]})
    with pytest.raises(DataError, match=r"^prediction for query \('nope', 'a', 0\): unknown clip_uid 'nope' "
                                        r"\(not in <ground truth in memory>\)$"):
        evaluate_predictions([rec("a", 0, [[1, 2]], clip="nope")], gt)
    with pytest.raises(DataError, match="unknown annotation_uid 'b'"):
        evaluate_predictions([rec("b", 0, [[1, 2]])], gt)
    with pytest.raises(DataError, match="query_idx 3 out of range"):
        evaluate_predictions([rec("a", 3, [[1, 2]])], gt)
    with pytest.raises(DataError, match="more than once"):
        evaluate_predictions([rec("a", 0, [[1, 2]]), rec("a", 0, [[1, 2]])], gt)
    with pytest.raises(DataError, match="expected '<annotation_uid>_<query index>'"):
        split_query_id("no-index")


@pytest.mark.parametrize("empty", [[], np.zeros((0, 2)), torch.zeros(0, 2), torch.zeros(0, 3)])
def test_a_prediction_without_windows_is_a_miss_not_an_error(empty):
    gt = make_gt({"a": [(10.0, 20.0), (30.0, 40.0)]})
    m = evaluate_predictions([rec("a", 0, empty), rec("a", 1, [[30.0, 40.0]])], gt)
    assert m["num_queries"] == 2
    assert all(m[name] == 50.0 for name in ("R1@0.3", "R1@0.5", "R5@0.5", "R10@0.3", "mIoU"))


def test_score_columns_are_ignored():
    """Documented rows ``[start, end, score]`` score exactly as ``[start, end]``."""
    gt = make_gt({"a": [(10.0, 20.0), (30.0, 40.0)]})
    windows = [[[12.0, 20.0], [0.0, 5.0]], [[0.0, 5.0], [30.0, 41.0]]]
    plain = evaluate_predictions([rec("a", i, w) for i, w in enumerate(windows)], gt)
    scored = evaluate_predictions(
        [rec("a", i, [row + [0.9 - 0.1 * j] for j, row in enumerate(w)]) for i, w in enumerate(windows)], gt)
    assert plain == scored and plain["R1@0.5"] == 50.0 and plain["R5@0.5"] == 100.0


def test_nothing_to_score_is_an_error_never_nan_metrics():
    gt = make_gt({"a": [(10.0, 20.0)]})
    with pytest.raises(DataError, match="no predictions to evaluate against <ground truth in memory>"):
        evaluate_predictions([], gt)
    test_split = make_gt({"a": [(10.0, 20.0)]})
    for query in test_split["videos"][0]["clips"][0]["annotations"][0]["language_queries"]:
        del query["clip_start_sec"], query["clip_end_sec"]
    with pytest.raises(DataError, match=r"query \('clip1', 'a', 0\).*has no ground-truth window"):
        evaluate_predictions([rec("a", 0, [[10.0, 20.0]])], test_split)


@pytest.mark.parametrize("windows,shape", [
    ([1.0, 2.0], "(2,)"),
    ([[1.0], [2.0]], "(2, 1)"),
    ([[[1.0, 2.0]]], "(1, 1, 2)"),
])
def test_badly_shaped_windows_are_rejected(windows, shape):
    gt = make_gt({"a": [(10.0, 20.0)]})
    with pytest.raises(DataError, match=re.escape(
            f"prediction ('clip1', 'a', 0): windows must be rows [start, end(, score)], got shape {shape}")):
        evaluate_predictions([rec("a", 0, windows)], gt)


@pytest.mark.parametrize("index", [0.0, "0", True, None])
def test_query_index_must_be_an_integer(index):
    gt = make_gt({"a": [(10.0, 20.0)]})
    with pytest.raises(DataError, match=f"query_idx must be an integer, got {re.escape(repr(index))}"):
        evaluate_predictions([rec("a", index, [[10.0, 20.0]])], gt)
    assert evaluate_predictions([rec("a", np.int64(0), [[10.0, 20.0]])], gt)["R1@0.5"] == 100.0


def test_matches_brute_force_official_definition():
    rng = random.Random(0)
    queries = [(round(rng.uniform(0, 90), 1),) for _ in range(40)]
    gt_windows = [(s[0], s[0] + rng.choice([0.0, 0.5, 2.0, 10.0])) for s in queries]
    gt = make_gt({"a": gt_windows})
    preds = []
    for idx, (gs, ge) in enumerate(gt_windows):
        windows = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:  # near the GT, on a coarse grid so exact ties happen
                s = gs + rng.choice([-2.0, -1.0, 0.0, 0.5, 1.0])
                e = ge + rng.choice([-1.0, 0.0, 1.0, 3.0])
            else:
                s = rng.uniform(0, 95)
                e = s + rng.choice([0.0, 1.0, 5.0])
            windows.append([s, max(s, e)])
        preds.append(rec("a", idx, windows))
    expected = official_restatement(preds, gt, (0.3, 0.5), (1, 5, 10))
    got = evaluate_predictions(preds, gt)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_real_val_ground_truth_scores_itself_perfectly():
    gt_path = require_shared("data", "ego4d_nlq_v2", "nlq_val.json")
    jsonl = require_shared("data", "ego4d_nlq_v2", "ego4d_nlq_val_v2.jsonl")
    gt = load_ground_truth(gt_path)
    assert gt.num_gt_queries == 4554 and len(gt.expected) == 4552
    with open(jsonl) as f:
        records = [json.loads(line) for line in f if line.strip()]
    results = [
        {"video_id": r["video_id"], "query_id": r["query_id"], "segments": np.array(r["timestamps"])}
        for r in records
    ]
    m = evaluate_predictions(results, gt)
    assert m["num_queries"] == 4552
    assert m["R1@0.5"] == 100.0 and m["mIoU"] == pytest.approx(100.0)
    # shifted by half their length: IoU = 1/3 for every window -> hit at 0.3, miss at 0.5
    shifted = []
    for r in records:
        s, e = r["timestamps"][0]
        shifted.append({"video_id": r["video_id"], "query_id": r["query_id"],
                        "segments": np.array([[s + (e - s) / 2, e + (e - s) / 2]])})
    m = evaluate_predictions(shifted, load_ground_truth(jsonl))
    assert m["R1@0.5"] == 0.0 and m["mIoU"] == pytest.approx(100 / 3, abs=1e-6)


def test_table_lists_values_k_major():
    table = format_metrics_table({"R1@0.3": 26.98, "R1@0.5": 18.83, "R5@0.3": 53.56, "R5@0.5": 40.0,
                                  "R10@0.3": 53.56, "R10@0.5": 40.0, "mIoU": 19.5, "num_queries": 3})
    lines = table.splitlines()
    assert lines[0] == lines[2] == lines[4] and set(lines[0]) == {"+", "-"}
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == [
        "R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "R10@0.3", "R10@0.5", "mIoU"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == [
        "26.98", "18.83", "53.56", "40.00", "53.56", "40.00", "19.50"]


def test_r_at_10_is_printed_only_when_more_than_5_windows_were_kept():
    metrics = {"R1@0.3": 26.98, "R1@0.5": 18.83, "R5@0.3": 53.56, "R5@0.5": 40.0,
               "R10@0.3": 53.56, "R10@0.5": 40.0, "mIoU": 19.5, "num_queries": 3}
    header = lambda windows: [c.strip() for c in format_metrics_table(metrics, windows=windows).splitlines()[1].split("|")[1:-1]]
    assert header(5) == ["R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU"]  # R@10 would repeat R@5
    assert header(6)[-3:] == ["R10@0.3", "R10@0.5", "mIoU"] and header(None) == header(6)
    assert header(1) == ["R1@0.3", "R1@0.5", "mIoU"] and header(0) == header(1)  # R@1 always
    assert informative_ks((10, 1, 5), 7) == [1, 5, 10] and informative_ks((1, 5, 10), 2) == [1, 5]
    results = [{"video_id": "c", "query_id": "a_0", "segments": np.zeros((3, 2))},
               {"video_id": "c", "query_id": "a_1", "predicted_times": [[0, 1]] * 7}, {"video_id": "c", "query_id": "a_2"}]
    assert windows_per_query(results) == 7 and windows_per_query([]) == 0


def test_table_exactly_with_a_title_and_a_nan():
    table = format_metrics_table({"R1@0.5": 18.831, "mIoU": float("nan")}, ks=(1,), thresholds=(0.5,),
                                 title="val (2 queries)")
    assert table == "\n".join([
        "val (2 queries)",
        "+--------+------+",
        "| R1@0.5 | mIoU |",
        "+--------+------+",
        "| 18.83  | nan  |",
        "+--------+------+",
    ])


def test_ground_truth_index_of_the_official_json():
    data = make_gt({"a": [(10.0, 20.0), (30.0, 40.0, "  "), (50.0, 60.0)], "b": [(1.0, 2.0)]})
    clip = data["videos"][0]["clips"][0]
    clip["video_start_sec"], clip["video_end_sec"] = 5.0, 105.0
    del clip["annotations"][1]["language_queries"][0]["clip_end_sec"]  # half a window: no window
    gt = load_ground_truth(data)
    assert gt.durations == {"clip1": 100.0}
    assert gt.num_queries == {("clip1", "a"): 3, ("clip1", "b"): 1}
    assert gt.windows == {("clip1", "a", 0): (10.0, 20.0), ("clip1", "a", 1): (30.0, 40.0),
                          ("clip1", "a", 2): (50.0, 60.0), ("clip1", "b", 0): None}
    assert gt.expected == [("clip1", "a", 0), ("clip1", "a", 2), ("clip1", "b", 0)]  # blank text skipped
    assert gt.num_gt_queries == 4


def test_ground_truth_index_of_jsonl_records():
    records = [{"video_id": "c1", "query_id": "a_b_2", "duration": 50.0, "timestamps": [[1.0, 2.0]]},
               {"video_id": "c1", "query_id": "a_b_0", "duration": 50.0},  # no window (test split)
               {"video_id": "c2", "query_id": "z_0", "duration": 8.5, "timestamps": [[3.0, 4.0]]}]
    gt = load_ground_truth(records)
    assert gt.durations == {"c1": 50.0, "c2": 8.5}
    assert gt.num_queries == {("c1", "a_b"): 3, ("c2", "z"): 1}  # the largest index, in any order
    assert gt.windows == {("c1", "a_b", 2): (1.0, 2.0), ("c1", "a_b", 0): None, ("c2", "z", 0): (3.0, 4.0)}
    assert gt.expected == [("c1", "a_b", 2), ("c1", "a_b", 0), ("c2", "z", 0)]
    with pytest.raises(DataError, match=r"query 1 of annotation 'a_b' is not in <ground truth in memory>$"):
        evaluate_predictions([{"clip_uid": "c1", "annotation_uid": "a_b", "query_idx": 1, "predicted_times": []}], gt)
    with pytest.raises(DataError, match="query_idx 3 out of range for annotation 'a_b' "
                                        r"\(it has 3 queries in <ground truth in memory>\)"):
        evaluate_predictions([{"clip_uid": "c1", "annotation_uid": "a_b", "query_idx": 3, "predicted_times": []}], gt)
    with pytest.raises(DataError, match=r"^prediction for query \('c1', 'a_b', 0\): <ground truth in memory> has "
                                        r"no ground-truth window for it \(test split\?\)$"):
        evaluate_predictions([{"video_id": "c1", "query_id": "a_b_0", "segments": [[1.0, 2.0]]}], gt)


@pytest.mark.parametrize("data, message", [
    ({"videos": [{"video_uid": "v1"}]}, "<ground truth in memory> video 'v1': missing key 'clips'"),
    ({"videos": ["v1"]}, "<ground truth in memory> video None: missing key 'clips'"),
    ({"videos": [{"video_uid": "v1", "clips": ["clip_uid"]}]}, "<ground truth in memory> clip: missing key 'clip_uid'"),
    ({"videos": [{"clips": [{"clip_uid": "c", "video_start_sec": 0}]}]},
     "<ground truth in memory> clip 'c': missing key 'video_end_sec'"),
    ({"videos": [{"clips": [{"clip_uid": "c", "video_end_sec": 9}]}]},
     "<ground truth in memory> clip 'c': missing key 'video_start_sec'"),
    ({"videos": [{"clips": [{"clip_uid": "c", "video_start_sec": 0, "video_end_sec": 9}]}]},
     "<ground truth in memory> clip 'c': missing key 'annotations'"),
    ({"videos": [{"clips": [{"clip_uid": "c", "video_start_sec": 0, "video_end_sec": 9, "annotations": [{}]}]}]},
     "<ground truth in memory> clip 'c': missing key 'annotation_uid'"),
    ({"videos": [{"clips": [{"clip_uid": "c", "video_start_sec": 0, "video_end_sec": 9,
                             "annotations": [{"annotation_uid": "a"}]}]}]},
     "<ground truth in memory> clip 'c' annotation 'a': missing key 'language_queries'"),
    ([{"query_id": "a_0", "duration": 1.0}], "<ground truth in memory> record 1: missing key 'video_id'"),
    ([{"video_id": "c", "query_id": "a_0", "duration": 1.0}, {"video_id": "c", "duration": 1.0}],
     "<ground truth in memory> record 2: missing key 'query_id'"),
    ([{"video_id": "c", "query_id": "a_0"}], "<ground truth in memory> record 1: missing key 'duration'"),
    ({"version": "2.0"}, "<ground truth in memory>: expected the official NLQ json (a dict with 'videos') "
                         "or a list of jsonl records"),
])
def test_ground_truth_errors_name_the_place(data, message):
    with pytest.raises(DataError, match="^" + re.escape(message) + "$"):
        load_ground_truth(data)


def test_ground_truth_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match=f"^ground-truth file not found: {re.escape(str(missing))}$"):
        load_ground_truth(str(missing))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(DataError, match=f"^{re.escape(str(broken))}: not valid JSON \\(Expecting"):
        load_ground_truth(str(broken))
    records = tmp_path / "gt.jsonl"
    records.write_text('{"video_id": "c", "query_id": "a_0", "duration": 1.0}\n{"query_id": "a_1"}\n')
    with pytest.raises(DataError, match=f"^{re.escape(str(records))} record 2: missing key 'video_id'$"):
        load_ground_truth(str(records))
    records.write_text('{"video_id": "c", "query_id": "a_0", "duration": 1.0}\n')
    assert load_ground_truth(str(records)).source == str(records)


@pytest.mark.parametrize("query_id, parts", [("a_3", ("a", 3)), ("a_b_12", ("a_b", 12))])
def test_query_ids_split_at_the_last_underscore(query_id, parts):
    assert split_query_id(query_id) == parts


@pytest.mark.parametrize("query_id", ["a3", "_3", "a_", "a_x", "a_-1"])
def test_malformed_query_ids_are_rejected(query_id):
    with pytest.raises(DataError, match=re.escape(f"query_id {query_id!r}: expected '<annotation_uid>_<query index>' "
                                                  "(e.g. '95441b96-..._3')") + "$"):
        split_query_id(query_id)


@pytest.mark.parametrize("result", [
    {"video_id": "clip1"}, {"query_id": "a_0"}, {"annotation_uid": "a", "predicted_times": []},
])
def test_a_prediction_that_names_no_query_is_rejected(result):
    gt = make_gt({"a": [(10.0, 20.0)]})
    with pytest.raises(DataError, match=re.escape(
            "prediction: expected a model result (video_id, query_id, segments) or a submission record "
            f"(clip_uid, annotation_uid, query_idx, predicted_times); got keys {sorted(result)}") + "$"):
        evaluate_predictions([result], gt)


@pytest.mark.parametrize("windows, message", [
    ([[1.0, 2.0], [3.0]], "windows must be rows [start, end(, score)] of equal length"),
    ([["1.0", "2.0"]], "windows must be numbers, got <U3 values [['1.0', '2.0']]"),
    ([[True, False]], "windows must be numbers, got bool values [[True, False]]"),
    (None, "windows must be numbers, got object values None"),
])
def test_windows_that_are_not_rows_of_numbers_are_rejected(windows, message):
    gt = make_gt({"a": [(10.0, 20.0)]})
    with pytest.raises(DataError, match="^" + re.escape(f"prediction ('clip1', 'a', 0): {message}") + "$"):
        evaluate_predictions([rec("a", 0, windows)], gt)


def test_windows_with_gradients_and_records_without_windows():
    gt = make_gt({"a": [(10.0, 20.0), (30.0, 40.0)]})
    tracked = torch.tensor([[10.0, 20.0]], requires_grad=True)
    result = {"video_id": "clip1", "query_id": "a_0", "segments": tracked * 1.0}
    bare = {"clip_uid": "clip1", "annotation_uid": "a", "query_idx": 1}  # no predicted_times: a miss
    m = evaluate_predictions([result, bare], gt)
    assert m["R1@0.5"] == 50.0 and m["num_queries"] == 2
    assert prediction_windows(bare).shape == (0, 2)
    assert prediction_windows({**bare, "predicted_times": [[1, 2, 0.5]]}).tolist() == [[1.0, 2.0]]


def test_iou_of_empty_windows_is_nan_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iou = temporal_iou(np.array([[5.0, 5.0], [0.0, 1.0]]), np.array([[5.0, 5.0], [0.0, 2.0]]))
    assert np.isnan(iou[0]) and iou[1] == 0.5
