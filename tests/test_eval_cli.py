"""eval.py: scoring a saved file from the command line, and its error handling."""
import json
import os
import subprocess
import sys

import pytest

import eval as eval_cli

REPO = os.path.dirname(os.path.abspath(eval_cli.__file__))


def official_gt():
    queries = [
        {"clip_start_sec": 10.0, "clip_end_sec": 20.0, "query": "where is the cup?"},
        {"clip_start_sec": 30.0, "clip_end_sec": 40.0, "query": "who did I talk to?"},
        {"clip_start_sec": 50.0, "clip_end_sec": 60.0, "query": ""},  # no text: not in the split
    ]
    clip = {"clip_uid": "c1", "video_start_sec": 0.0, "video_end_sec": 100.0,
            "annotations": [{"annotation_uid": "a", "language_queries": queries}]}
    return {"version": "2.0", "videos": [{"video_uid": "v", "clips": [clip]}]}


def write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def submission(results):
    return {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}


def test_scores_a_hand_made_file(tmp_path, capsys):
    gt = write(tmp_path / "nlq_val.json", official_gt())
    # query 0: top-1 IoU 0.5 (a miss at 0.5, strict), 2nd window exact; query 1: top-1 [30, 37] IoU 0.7
    pred = write(tmp_path / "sub.json", submission([
        {"clip_uid": "c1", "annotation_uid": "a", "query_idx": 0, "predicted_times": [[10.0, 15.0], [10.0, 20.0]]},
        {"clip_uid": "c1", "annotation_uid": "a", "query_idx": 1, "predicted_times": [[30.0, 37.0, 0.4]]},
    ]))
    out = tmp_path / "m.json"
    assert eval_cli.main(["--pred-file", pred, "--gt-file", gt, "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Evaluated: 2 / 3 instances" in printed
    metrics = json.loads(out.read_text())
    assert metrics["R1@0.3"] == 100.0 and metrics["R1@0.5"] == 50.0 and metrics["R5@0.5"] == 100.0
    assert metrics["mIoU"] == pytest.approx(60.0)
    assert metrics["num_queries"] == 2
    row = [c.strip() for c in printed.strip().splitlines()[-2].split("|")[1:-1]]
    assert row == ["100.00", "50.00", "100.00", "100.00", "60.00"]  # R@10 would repeat R@5 (2 windows)


def test_bad_file_is_one_line_on_stderr_exit_2(tmp_path):
    gt = write(tmp_path / "nlq_val.json", official_gt())
    pred = write(tmp_path / "sub.json", submission([
        {"clip_uid": "c1", "annotation_uid": "zz", "query_idx": 0, "predicted_times": [[1.0, 2.0]]}]))
    cmd = [sys.executable, "eval.py", "--pred-file", pred, "--gt-file", gt]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {pred} results[0]: unknown annotation_uid 'zz' for clip 'c1' (not in {gt})"]
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=REPO)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_argument_errors(tmp_path, capsys):
    assert eval_cli.main(["--pred-file", "x.json"]) == 2
    assert "--pred-file needs --gt-file" in capsys.readouterr().err
    assert eval_cli.main([]) == 2
    assert "expected CONFIG CHECKPOINT" in capsys.readouterr().err
    assert eval_cli.main(["cfg.yaml", str(tmp_path / "none.pth.tar")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_checkpoint_tag():
    assert eval_cli._checkpoint_tag("/x/epoch_004.pth.tar", "val") == "val_epoch_004"
    assert eval_cli._checkpoint_tag("model_best.pt", "test") == "test_model_best"
