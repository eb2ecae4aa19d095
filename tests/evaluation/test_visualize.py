"""Timeline figures: what they show (IoU, file names, raw curves) and the PNGs they write."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from libs.core.errors import DataError, GroundNLQError
from libs.evaluation import visualize
from libs.evaluation.visualize import QueryTimeline, load_level_curves, render_timeline, timeline_file_name
from tests.conftest import ROOT


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def make_view(**changes):
    fields = dict(query_id="ann_3", clip_uid="clip", text="where is the cup?", template="Objects: Where is object X?",
                  duration=100.0, gt_window=(40.0, 50.0),
                  windows=np.array([[45.0, 55.0], [40.0, 48.0], [0.0, 5.0], [41.0, 44.0]]),
                  scores=np.array([0.9, 0.7, 0.5, 0.2]))
    fields.update(changes)
    return QueryTimeline(**fields)


def test_ious_are_the_official_ones():
    # [45, 55]: 5 / 15; [40, 48]: 8 / 10; [0, 5]: 0; [41, 44]: 3 / 10
    assert make_view().ious().tolist() == pytest.approx([1 / 3, 0.8, 0.0, 0.3])
    assert np.isnan(make_view(gt_window=None).ious()).all()


def test_hit_colours_follow_the_strict_thresholds():
    assert visualize._hit_color(0.8) == visualize.HIT_COLORS[0][1]
    assert visualize._hit_color(0.5) == visualize.HIT_COLORS[1][1]  # 0.5 is not > 0.5
    assert visualize._hit_color(0.3) == visualize.MISS_COLOR


def test_file_names_are_path_safe():
    assert timeline_file_name("a/b c_1") == "timeline_a_b_c_1.png"


def test_renders_timeline_png_of_fixed_size(tmp_path):
    pytest.importorskip("matplotlib")
    path = render_timeline(make_view(), str(tmp_path / "t.png"))
    assert os.path.getsize(path) > 10000
    assert png_size(path) == (1300, 480)
    # no template, no GT, no scores: still drawn
    bare = render_timeline(make_view(template=None, gt_window=None, scores=None), str(tmp_path / "bare.png"))
    assert png_size(bare) == (1300, 480)


def test_renders_per_level_curves_from_raw_file(tmp_path):
    pytest.importorskip("matplotlib")
    times = [torch.linspace(0.5, 99.5, 64 >> level) for level in range(3)]
    raw = {"ann_3": [{"times": t, "scores": torch.sigmoid(-((t - 45.0) / 5.0) ** 2)} for t in times]}
    torch.save(raw, tmp_path / "raw.pt")
    curves = load_level_curves(str(tmp_path / "raw.pt"), "ann_3")
    assert [len(t) for t, _ in curves] == [64, 32, 16]
    path = render_timeline(make_view(level_curves=curves), str(tmp_path / "curves.png"))
    assert png_size(path) == (1300, 700)
    with pytest.raises(DataError, match="no raw outputs for query 'other_0'"):
        load_level_curves(str(tmp_path / "raw.pt"), "other_0")
    torch.save({"ann_3": [{"times": torch.zeros(3), "scores": torch.zeros(4)}]}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="level 0: times"):
        load_level_curves(str(tmp_path / "bad.pt"), "ann_3")


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(GroundNLQError, match=r"pip install -e \.\[viz\]"):
        render_timeline(make_view(), str(tmp_path / "t.png"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo val split and predictions made from its GT (shifted top window, random others)."""
    from libs.datasets.demo import make_demo_data
    from libs.evaluation.metrics import load_ground_truth
    from libs.evaluation.submission import save_predictions

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(str(root / "demo"), num_train_clips=1, num_val_clips=3, num_test_clips=1)
    gt_file = str(root / "demo" / "nlq_val.json")
    gt = load_ground_truth(gt_file)
    rng = np.random.default_rng(0)
    results = []
    for key in gt.expected:
        start, end = gt.windows[key]
        shift = rng.normal(0.0, 1.0) * (end - start)
        duration = gt.durations[key[0]]
        windows = [[min(max(start + shift, 0.0), duration), min(max(end + shift, 0.0), duration)],
                   [start, end], [0.0, 1.0]]
        results.append({"clip_uid": key[0], "annotation_uid": key[1], "query_idx": key[2],
                        "segments": windows, "scores": [0.9, 0.5, 0.1]})
    save_predictions(results, str(root / "pred.json"))
    return gt_file, str(root / "pred.json"), [f"{k[1]}_{k[2]}" for k in gt.expected]


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "visualize.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_cli_draws_named_worst_and_random_queries(demo_run, tmp_path):
    pytest.importorskip("matplotlib")
    gt_file, pred, query_ids = demo_run
    done = run_cli("--pred", pred, "--gt", gt_file, "--query-id", query_ids[0], "--out", str(tmp_path / "one"))
    assert done.returncode == 0, done.stderr
    path = tmp_path / "one" / timeline_file_name(query_ids[0])
    assert png_size(path) == (1300, 480) and path.stat().st_size > 10000
    done = run_cli("--pred", pred, "--gt", gt_file, "--worst", "2", "--random", "1", "--out", str(tmp_path / "x"))
    assert done.returncode == 2  # argparse: --worst and --random exclude each other
    for pick in ("--worst", "--random"):
        done = run_cli("--pred", pred, "--gt", gt_file, pick, "2", "--out", str(tmp_path / pick[2:]))
        assert done.returncode == 0, done.stderr
        written = sorted((tmp_path / pick[2:]).glob("timeline_*.png"))
        assert len(written) == 2 and all(p.stat().st_size > 10000 for p in written)


def test_cli_unknown_query_id_is_one_line_exit_2(demo_run, tmp_path):
    pytest.importorskip("matplotlib")
    gt_file, pred, _ = demo_run
    done = run_cli("--pred", pred, "--gt", gt_file, "--query-id", "no-such-query_0", "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and done.stderr.strip().count("\n") == 0
    assert "no-such-query_0" in done.stderr
