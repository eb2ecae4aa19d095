"""Recall breakdowns and run reports: hand-computed tables, agreement with the metric code, files."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from libs.core.errors import DataError, GroundNLQError
from libs.evaluation import analysis
from libs.evaluation.analysis import (
    NO_TEMPLATE,
    breakdown_table,
    build_timeline,
    load_runs,
    load_split,
    overall_table,
    per_query_table,
    query_changes,
    side_by_side,
    worst_queries,
    write_report,
)
from libs.evaluation.metrics import evaluate_predictions
from tests.conftest import ROOT, require_shared

T_A = "Objects: Where is object X?"
T_B = "Place: Where did I put X?"


def _query(start, end, template, text="where?"):
    q = {"clip_start_sec": start, "clip_end_sec": end, "query": text}
    if template is not None:
        q["template"] = template
    return q


def official_gt():
    """Clip c1 (100 s): a_0 [10, 11] T_A, a_1 [40, 45] T_A, a_2 [60, 80] T_B.
    Clip c2 (480 s): b_0 [400, 440] no template, b_1 [100, 102] T_B."""
    c1 = {"clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 100.0, "annotations": [
        {"annotation_uid": "a", "language_queries": [
            _query(10.0, 11.0, T_A), _query(40.0, 45.0, T_A), _query(60.0, 80.0, T_B)]}]}
    c2 = {"clip_uid": "c2", "video_start_sec": 0.0, "video_end_sec": 480.0, "annotations": [
        {"annotation_uid": "b", "language_queries": [_query(400.0, 440.0, None), _query(100.0, 102.0, T_B)]}]}
    return {"version": "2.0", "videos": [{"video_uid": "v1", "clips": [c1]}, {"video_uid": "v2", "clips": [c2]}]}


RUN_A = {  # query_id -> rows [start, end, score]
    "a_0": [[10.0, 11.0, 0.9]],                       # IoU 1
    "a_1": [[0.0, 5.0, 0.8], [40.0, 44.0, 0.5]],      # top-1 IoU 0, 2nd IoU 0.8
    "a_2": [[60.0, 70.0, 0.7]],                       # IoU 0.5: a miss at 0.5 (strict)
    "b_0": [[0.0, 10.0, 0.95]],                       # IoU 0
    "b_1": [[100.0, 102.5, 0.6]],                     # IoU 0.8
}
RUN_B = dict(RUN_A, a_0=[[30.0, 31.0, 0.9]], b_0=[[400.0, 440.0, 0.9]])


def write_predictions(path, rows_by_query):
    clip = {"a": "c1", "b": "c2"}
    results = []
    for query_id, rows in rows_by_query.items():
        ann, idx = query_id.split("_")
        results.append({"clip_uid": clip[ann], "annotation_uid": ann, "query_idx": int(idx), "predicted_times": rows})
    path.write_text(json.dumps({"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}))
    return str(path)


@pytest.fixture
def files(tmp_path):
    gt = tmp_path / "nlq_val.json"
    gt.write_text(json.dumps(official_gt()))
    return str(gt), write_predictions(tmp_path / "runA.json", RUN_A), write_predictions(tmp_path / "runB.json", RUN_B)


def test_query_table_buckets_and_templates(files):
    split = load_split(files[0])
    q = split.queries
    assert list(q.index) == ["a_0", "a_1", "a_2", "b_0", "b_1"]
    assert list(q["template"]) == [T_A, T_A, T_B, NO_TEMPLATE, T_B]
    # a window of exactly 2 s is in "2-10 s" (low <= v < high)
    assert list(q["gt_length_bucket"]) == ["under 2 s", "2-10 s", "10-30 s", "over 30 s", "2-10 s"]
    assert list(q["clip_duration_bucket"]) == ["under 5 min"] * 3 + ["8 min"] * 2
    assert list(q["position_bucket"]) == ["first quarter", "second quarter", "third quarter", "last quarter",
                                          "first quarter"]
    assert q.loc["b_1", "position"] == pytest.approx(101.0 / 480.0)


def test_template_breakdown_hand_computed(files):
    split = load_split(files[0])
    (run,) = load_runs([files[1]], split)
    table = breakdown_table(run, split, "template").set_index("group")
    assert list(table.index) == [T_A, T_B, NO_TEMPLATE]  # most queries first, ties by name, none last
    assert list(table["num_queries"]) == [2, 2, 1]
    assert table.loc[T_A, ["R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU"]].tolist() == pytest.approx([50, 50, 100, 100, 50])
    assert table.loc[T_B, ["R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU"]].tolist() == pytest.approx([100, 50, 100, 50, 65])
    assert table.loc[NO_TEMPLATE, ["R1@0.3", "R5@0.5", "mIoU"]].tolist() == [0, 0, 0]


def test_bucket_breakdowns_hand_computed(files):
    split = load_split(files[0])
    (run,) = load_runs([files[1]], split)
    length = breakdown_table(run, split, "gt_length").set_index("group")
    assert length["R1@0.5"].to_dict() == pytest.approx({"under 2 s": 100, "2-10 s": 50, "10-30 s": 0, "over 30 s": 0})
    assert length.loc["10-30 s", "R1@0.3"] == 100
    duration = breakdown_table(run, split, "clip_duration").set_index("group")
    assert list(duration.index) == ["under 5 min", "8 min"]  # empty buckets left out
    assert duration["R1@0.3"].tolist() == pytest.approx([200 / 3, 50])
    position = breakdown_table(run, split, "position").set_index("group")
    assert position["R1@0.5"].tolist() == pytest.approx([100, 0, 0, 0])
    with pytest.raises(DataError, match="unknown breakdown 'verb'"):
        breakdown_table(run, split, "verb")


def test_per_query_hits_agree_with_metric(files):
    split = load_split(files[0])
    runs = load_runs([files[1], files[2]], split)
    for run in runs:
        table = per_query_table(run, split)
        official = evaluate_predictions(run.records, split.gt)
        for name in ("R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "R10@0.5"):
            assert 100.0 * table[name].mean() == pytest.approx(official[name])
        assert 100.0 * table["top1_iou"].mean() == pytest.approx(official["mIoU"])
    table = per_query_table(runs[0], split)
    assert table["best_iou_top5"].to_dict() == pytest.approx({"a_0": 1.0, "a_1": 0.8, "a_2": 0.5, "b_0": 0.0, "b_1": 0.8})


def test_worst_queries_order(files):
    split = load_split(files[0])
    (run,) = load_runs([files[1]], split)
    worst = worst_queries(per_query_table(run, split), count=4)
    # lowest best IoU first; a_1 and b_1 tie at 0.8: the more confident top-1 (0.8 > 0.6) first
    assert list(worst.index) == ["b_0", "a_2", "a_1", "b_1"]


def test_two_runs_side_by_side(files):
    split = load_split(files[0])
    runs = load_runs([files[1], files[2]], split)
    overall = overall_table(runs, split).set_index("run")
    assert overall.loc["runA", ["R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU"]].tolist() == pytest.approx([60, 40, 80, 60, 46])
    assert overall.loc["runB", "R1@0.5"] == pytest.approx(40)
    assert overall.loc["runB - runA", "R1@0.3"] == pytest.approx(overall.loc["runB", "R1@0.3"] - 60)
    assert pd.isna(overall.loc["runB - runA", "num_queries"])
    tables = {r.name: breakdown_table(r, split, "gt_length") for r in runs}
    wide = side_by_side(tables).set_index("group")
    assert wide.loc["over 30 s", ["runA", "runB", "runB - runA"]].tolist() == [0, 100, 100]
    assert wide.loc["under 2 s", "runB - runA"] == -100
    changes = query_changes({r.name: per_query_table(r, split) for r in runs}).iloc[0]
    assert (changes["both_hit"], changes["only_run_hits"], changes["only_baseline_hits"], changes["neither"]) == (1, 1, 1, 2)
    assert changes["recall_difference"] == pytest.approx(0.0)


def test_report_csv_numbers_match_metric_code(files, tmp_path):
    gt_file, run_a, run_b = files
    out = tmp_path / "report"
    report = write_report([run_a, run_b], gt_file, str(out), worst=3, charts=False)
    text = open(report).read()
    assert "## By query template" in text and "runB - runA" in text
    split = load_split(gt_file)
    runs = {r.name: r for r in load_runs([run_a, run_b], split)}
    for by, (column, _) in analysis.BREAKDOWNS.items():
        csv = pd.read_csv(out / "tables" / f"by_{by}.csv")
        assert set(csv["run"]) == {"runA", "runB"}
        for row in csv.itertuples(index=False):
            members = [r for q, r in runs[row.run].by_query.items() if split.queries.loc[q, column] == row.group]
            expected = evaluate_predictions(members, split.gt)
            assert row.num_queries == expected["num_queries"]
            assert row._asdict()["_4"] == pytest.approx(expected["R1@0.5"])  # column order: run, group, n, R1@0.3, R1@0.5
            assert row.mIoU == pytest.approx(expected["mIoU"])
    overall = pd.read_csv(out / "tables" / "overall.csv")
    assert overall.loc[0, "R5@0.3"] == pytest.approx(evaluate_predictions(runs["runA"].records, split.gt)["R5@0.3"])
    recall_k = pd.read_csv(out / "tables" / "recall_at_k.csv")
    row = recall_k[(recall_k.run == "runA") & (recall_k.k == 2) & (recall_k.threshold == 0.5)]
    assert row["recall"].item() == pytest.approx(60.0)  # a_1's second window counts from K = 2
    worst = pd.read_csv(out / "tables" / "worst_runA.csv", index_col=0)
    assert list(worst.index) == ["b_0", "a_2", "a_1"]
    assert not (out / "charts").exists()


def test_unknown_query_id_is_named(files):
    split = load_split(files[0])
    (run,) = load_runs([files[1]], split)
    with pytest.raises(DataError, match="unknown query id 'nope_3'"):
        build_timeline("nope_3", run, split)
    view = build_timeline("a_1", run, split)
    assert view.template == T_A and view.gt_window == (40.0, 45.0) and view.duration == 100.0
    assert view.ious().tolist() == pytest.approx([0.0, 0.8])
    assert build_timeline("b_0", run, split).template is None


def test_charts_need_matplotlib(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(GroundNLQError, match=r"pip install -e \.\[viz\]"):
        write_report([files[1]], files[0], str(tmp_path / "r"))


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def demo_predictions(gt, path, seed):
    """Predictions made from the demo split's GT: the top window shifted, the rest random."""
    from libs.evaluation.submission import save_predictions

    rng = np.random.default_rng(seed)
    results = []
    for key in gt.expected:
        start, end = gt.windows[key]
        duration = gt.durations[key[0]]
        shift = rng.normal(0.0, 0.5) * max(end - start, 2.0)
        windows = [[min(max(start + shift, 0.0), duration), min(max(end + shift, 0.0), duration)]]
        for _ in range(4):
            centre, length = rng.uniform(0.0, duration), rng.uniform(1.0, 20.0)
            windows.append([max(centre - length / 2, 0.0), min(centre + length / 2, duration)])
        results.append({"clip_uid": key[0], "annotation_uid": key[1], "query_idx": key[2],
                        "segments": windows, "scores": sorted(rng.random(5).tolist(), reverse=True)})
    save_predictions(results, str(path))
    return str(path)


def test_report_from_demo_predictions_with_charts(tmp_path):
    pytest.importorskip("matplotlib")
    from libs.datasets.demo import make_demo_data
    from libs.evaluation.metrics import load_ground_truth

    make_demo_data(str(tmp_path / "demo"), num_train_clips=1, num_val_clips=6, num_test_clips=1)
    gt_file = str(tmp_path / "demo" / "nlq_val.json")
    gt = load_ground_truth(gt_file)
    preds = [demo_predictions(gt, tmp_path / f"run{i}.json", seed=i) for i in range(2)]
    write_report(preds, gt_file, str(tmp_path / "report"), worst=5)
    for name in ("recall_at_k", "by_template", "by_gt_length", "by_clip_duration", "by_position"):
        path = tmp_path / "report" / "charts" / f"{name}.png"
        assert path.stat().st_size > 5000
        if name == "recall_at_k":
            assert png_size(path) == (800, 450)
        else:
            groups = pd.read_csv(tmp_path / "report" / "tables" / f"{name}.csv").query("run == 'run0'")
            expected = (analysis.CHART_WIDTH_IN, analysis.breakdown_chart_height(len(groups), 2))
            assert png_size(path) == tuple(round(100 * v) for v in expected)
    template = pd.read_csv(tmp_path / "report" / "tables" / "by_template.csv")
    run0 = template[template.run == "run0"]
    assert run0["num_queries"].sum() == len(gt.expected)
    overall = evaluate_predictions(load_runs([preds[0]], load_split(gt_file))[0].records, gt)
    weighted = (run0["R1@0.3"] * run0["num_queries"]).sum() / run0["num_queries"].sum()
    assert weighted == pytest.approx(overall["R1@0.3"])  # groups partition the queries


def test_real_val_split_query_table():
    split = load_split(require_shared("data", "ego4d_nlq_v2", "nlq_val.json"))
    q = split.queries
    assert len(q) == 4554  # every query has a window in val (2 have no text)
    assert q["template"].value_counts()["Place: Where did I put X?"] == 725
    assert (q["template"] == NO_TEMPLATE).sum() == 18
    assert q["gt_length_bucket"].isna().sum() == 0 and q["position_bucket"].isna().sum() == 0


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "analyze.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_writes_report_and_reports_errors_in_one_line(files, tmp_path):
    gt_file, run_a, _ = files
    done = run_cli(run_a, "--gt", gt_file, "--out", str(tmp_path / "rep"), "--no-charts")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "rep" / "report.md").is_file()
    failed = run_cli(str(tmp_path / "missing.json"), "--gt", gt_file, "--out", str(tmp_path / "rep2"), "--no-charts")
    assert failed.returncode == 2
    assert failed.stderr.strip().count("\n") == 0 and "missing.json" in failed.stderr
