"""Ensembling prediction files: the reference's fusion worked by hand, weighted fusion, the CLI."""
import json
import subprocess
import sys

import pytest

import ensemble as ensemble_cli
from libs.core.errors import DataError
from libs.evaluation.ensemble import (
    cluster_top1,
    ensemble_predictions,
    fuse_reference,
    fuse_weighted,
    span_iou,
    temporal_nms,
)
from libs.evaluation.submission import load_prediction_file

M1 = [[10, 20, 0.9], [30, 40, 0.5], [50, 60, 0.4], [70, 80, 0.3], [0, 1, 0.2]]
M2 = [[11, 21, 0.8], [31, 41, 0.6], [90, 95, 0.1]]
M3 = [[40, 50, 0.7], [10, 20, 0.05]]


def test_clusters_median_and_best_proposals():
    # centres 5, 6, 7, 8 chain into one cluster; best = first top score [0, 10, .9]; even count:
    # central members [1, 11, .5] and [2, 12, .6] -> the higher-scoring [2, 12, .6]
    windows = [[0, 10, 0.9], [1, 11, 0.5], [2, 12, 0.6], [3, 13, 0.3]]
    assert cluster_top1(windows) == [pytest.approx([1.0, 11.0, 0.75, 0, 2.3])]
    # equal central scores -> the lower one [1, 11, .5]
    windows[2][2] = 0.5
    assert cluster_top1(windows) == [pytest.approx([0.5, 10.5, 0.7, 0, 2.2])]
    # odd count: the median by centre; a gap of exactly 2.0 s starts a new cluster
    odd = [[20, 30, 0.5], [1, 11, 0.3], [3, 11, 0.4], [0, 10, 0.2]]  # centres 25 | 6, 7, 5
    assert cluster_top1(odd) == [  # sorted by total score
        pytest.approx([2.0, 11.0, 0.35, 0, 0.9]),  # median [1, 11, .3] and best [3, 11, .4]
        pytest.approx([20, 30, 0.5, 0, 0.5]),
    ]
    two = cluster_top1([[4, 6, 0.5], [6, 8, 0.4]])  # centres 5 and 7: gap 2.0 is not < 2.0
    assert two == [pytest.approx([4, 6, 0.5, 0, 0.5]), pytest.approx([6, 8, 0.4, 0, 0.4])]


def test_equal_centres_are_kept_not_overwritten():
    # three top-1 windows, two with centre 17: the reference kept only the last of them
    proposals = cluster_top1([[11, 20, 0.5], [12, 22, 0.9], [14, 20, 0.95]])
    # one cluster of 3 (centres 15.5, 17, 17); median = [12, 22, .9]; best = [14, 20, .95]
    assert proposals == [pytest.approx([13.0, 21.0, 0.925, 0, 2.35])]


def test_temporal_nms_uses_strict_threshold_and_span_iou():
    assert span_iou([0, 4], [2, 6]) == pytest.approx(2 / 6)
    assert span_iou([3, 3], [3, 3]) == 0.0  # zero span -> 0
    cands = [[0, 10, 0.9], [0, 5, 0.8], [0, 6, 0.7], [20, 30, 0.6]]
    # IoU([0,10],[0,5]) = 0.5 exactly: kept (only > 0.5 suppresses); [0,6] IoU 0.6: dropped
    assert temporal_nms(cands, 0.5, 5) == [[0, 10, 0.9], [0, 5, 0.8], [20, 30, 0.6]]
    assert temporal_nms(cands, 0.5, 2) == [[0, 10, 0.9], [0, 5, 0.8]]


def test_reference_fusion_by_hand():
    # top-1 centres 15 (M1), 16 (M2), 45 (M3): clusters {15, 16} -> proposal [10, 20, .9] (total 1.7)
    # and {45} -> [40, 50, .7]. Candidates sorted by score (stable): [10,20,.9] M1, [10,20,.9] prop,
    # [11,21,.8], [40,50,.7] M3, [40,50,.7] prop, [31,41,.6], [30,40,.5], [50,60,.4], [70,80,.3], ...
    # NMS: keep [10,20] (drops prop, [11,21] IoU .82, [10,20,.05]); keep [40,50] (drops prop);
    # keep [31,41] (drops [30,40] IoU .82); keep [50,60]; keep [70,80] -> 5
    assert fuse_reference([M1, M2, M3]) == [[10, 20], [40, 50], [31, 41], [50, 60], [70, 80]]


def test_reference_fusion_pads_by_repeating_the_last():
    fused = fuse_reference([[[0, 10, 0.9]], [[1, 10, 0.8]], [[30, 40, 0.1]]])
    # candidates [0,10,.9], [1,10,.8], [30,40,.1] + proposals {5, 5.5} -> mean of middle [0,10] and
    # best [0,10] = [0,10,.9]; {35} -> [30,40,.1]. NMS keeps [0,10] and [30,40]; pad to 5
    assert fused == [[0, 10], [30, 40], [30, 40], [30, 40], [30, 40]]


def test_weighted_fusion_sanity():
    a = [[10, 20, 0.8], [50, 60, 0.9]]
    b = [[10.5, 20.5, 0.6], [70, 80, 0.2]]
    fused = fuse_weighted([a, b])
    # [10,20] and [10.5,20.5] fuse (IoU .905): boundaries weighted .8/.6; score (.8+.6)/2 = .7 beats
    # [50,60] (.9/2) and [70,80] (.2/2)
    assert fused[0] == pytest.approx([(8 + 6.3) / 1.4, (16 + 12.3) / 1.4])
    assert fused[1:] == [[50, 60], [70, 80], [70, 80], [70, 80]]
    # weights move the fused boundaries towards the heavier model
    heavy_b = fuse_weighted([a, b], weights=[1, 3])
    assert heavy_b[0] == pytest.approx([(1.8 * 10.5 + 0.8 * 10) / 2.6, (1.8 * 20.5 + 0.8 * 20) / 2.6])
    # a model's own overlapping windows never fuse with each other
    same = fuse_weighted([[[10, 20, 0.8], [11, 21, 0.7]]])
    assert same[:2] == [[10, 20], [11, 21]]


def write_pred(path, records):
    path.write_text(json.dumps({"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": records}))
    return str(path)


def rec(ann, idx, rows, clip="c1"):
    return {"clip_uid": clip, "annotation_uid": ann, "query_idx": idx, "predicted_times": rows}


def test_matching_by_query_not_position(tmp_path):
    p1 = write_pred(tmp_path / "p1.json", [rec("a", 0, M1), rec("a", 1, M2)])
    p2 = write_pred(tmp_path / "p2.json", [rec("a", 1, M3), rec("a", 0, M2)])  # other order
    p3 = write_pred(tmp_path / "p3.json", [rec("a", 0, M3), rec("a", 1, M1)])
    sets = [load_prediction_file(p, require_scores=True) for p in (p1, p2, p3)]
    sub = ensemble_predictions(sets, [p1, p2, p3])
    assert [(r["annotation_uid"], r["query_idx"]) for r in sub["results"]] == [("a", 0), ("a", 1)]
    assert sub["results"][0]["predicted_times"] == fuse_reference([M1, M2, M3])
    assert sub["results"][1]["predicted_times"] == fuse_reference([M2, M3, M1])


def test_missing_query_and_missing_scores_are_named(tmp_path):
    p1 = write_pred(tmp_path / "p1.json", [rec("a", 0, M1), rec("a", 1, M2)])
    p2 = write_pred(tmp_path / "p2.json", [rec("a", 0, M2)])
    sets = [load_prediction_file(p, require_scores=True) for p in (p1, p2)]
    with pytest.raises(DataError, match=r"p2.json: lacks query a_1 \(clip c1\)"):
        ensemble_predictions(sets, [p1, p2])
    p3 = write_pred(tmp_path / "p3.json", [rec("a", 0, M1), rec("a", 1, M2), rec("a", 5, M3)])
    with pytest.raises(DataError, match=r"p1.json: lacks query a_5 \(clip c1\) that .*p3.json has"):
        ensemble_predictions([sets[0], load_prediction_file(p3)], [p1, p3])
    no_scores = write_pred(tmp_path / "p4.json", [rec("a", 0, [[1, 2]])])
    with pytest.raises(DataError, match="needs a score"):
        load_prediction_file(no_scores, require_scores=True)


def test_cli_writes_a_validated_submission(tmp_path):
    records = [{"query": "q", "query_id": "a_0", "duration": 100.0, "video_id": "c1", "query_type": "nlq"}]
    gt = tmp_path / "test.jsonl"
    gt.write_text("\n".join(json.dumps(r) for r in records))
    p1 = write_pred(tmp_path / "p1.json", [rec("a", 0, M1)])
    p2 = write_pred(tmp_path / "p2.json", [rec("a", 0, M2)])
    out = tmp_path / "sub.json"
    assert ensemble_cli.main([p1, p2, "--out", str(out), "--gt", str(gt)]) == 0
    sub = json.loads(out.read_text())
    assert sub["results"][0]["predicted_times"] == fuse_reference([M1, M2])
    assert ensemble_cli.main([p1, p2, "--out", str(out), "--method", "weighted", "--weights", "1", "2"]) == 0
    bad = tmp_path / "bad.json"
    assert ensemble_cli.main([p1, p2, "--out", str(bad), "--weights", "1"]) == 2
    assert not bad.exists()


def test_cli_error_is_one_line_exit_2(tmp_path):
    p1 = write_pred(tmp_path / "p1.json", [rec("a", 0, M1)])
    proc = subprocess.run([sys.executable, "ensemble.py", p1, str(tmp_path / "missing.json"), "--out",
                           str(tmp_path / "o.json")], capture_output=True, text=True,
                          cwd=ensemble_cli.__file__.rsplit("/", 1)[0])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: prediction file not found: {tmp_path / 'missing.json'}"]
