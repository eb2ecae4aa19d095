"""Training curves: forgiving log reading, series split, and the PNG written beside the logs."""
import json
import os

import pytest

from libs.core.errors import DataError
from libs.utils.training_plots import CURVES_FILE, plot_training_curves, read_metrics_log, training_series

LINES = [
    {"iteration": 0, "epoch": 0, "final_loss": 2.0, "cls_loss": 1.2, "reg_loss": 0.8, "lr": 1e-5, "time": 0.1},
    {"iteration": 10, "final_loss": 1.5, "lr": 5e-5, "note": "text", "flag": True},
    {"iteration": 19, "epoch": 0, "final_loss": 1.0, "lr": 1e-4,
     "val/R1@0.3": 20.0, "val/R1@0.5": 10.0, "val/mIoU": 12.5, "val_ema/R1@0.5": 11.0, "val/num_queries": 133},
    {"epoch": 1, "cls_loss": 0.5},  # no iteration: one step after the previous line
    {"iteration": 39, "R5@0.5": 33.0},  # a bare recall key
]


def write_log(folder, lines, tail=""):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines) + tail)
    return str(folder)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_reading_skips_malformed_lines_and_non_numbers(tmp_path):
    run = write_log(tmp_path, LINES, tail='["not", "a dict"]\n{"iteration": 40, "final_lo')
    entries = read_metrics_log(os.path.join(run, "metrics.jsonl"))
    assert len(entries) == len(LINES)
    assert entries[1] == {"iteration": 10.0, "final_loss": 1.5, "lr": 5e-5}  # text and bool dropped
    with pytest.raises(DataError, match="training log not found"):
        read_metrics_log(str(tmp_path / "nowhere" / "metrics.jsonl"))


def test_series_split_losses_lr_and_recall(tmp_path):
    series = training_series(read_metrics_log(os.path.join(write_log(tmp_path, LINES), "metrics.jsonl")))
    assert series["loss"]["final_loss"] == ([0, 10, 19], [2.0, 1.5, 1.0])
    assert series["loss"]["cls_loss"] == ([0, 20], [1.2, 0.5])  # 20 = 19 + 1
    assert series["lr"]["lr"] == ([0, 10, 19], [1e-5, 5e-5, 1e-4])
    assert series["recall"]["R1@0.5"] == ([19], [10.0])  # the default "val/" prefix is dropped
    assert series["recall"]["val_ema/R1@0.5"] == ([19], [11.0])  # other prefixes kept
    assert series["recall"]["mIoU"] == ([19], [12.5])
    assert series["recall"]["R5@0.5"] == ([39], [33.0])
    assert "num_queries" not in series["recall"] and "time" not in series["loss"]


def test_plot_writes_png_beside_the_logs(tmp_path):
    pytest.importorskip("matplotlib")
    run = write_log(tmp_path / "run", LINES)
    path = plot_training_curves(run)
    assert path == os.path.join(run, CURVES_FILE)
    assert os.path.getsize(path) > 10000
    assert png_size(path) == (1600, 450)


def test_plot_with_missing_keys(tmp_path):
    pytest.importorskip("matplotlib")
    run = write_log(tmp_path / "losses_only", [{"iteration": i, "final_loss": 1.0 / (i + 1)} for i in range(5)])
    out = plot_training_curves(run, str(tmp_path / "elsewhere" / "curves.png"))
    assert png_size(out) == (1600, 450)
    empty = write_log(tmp_path / "empty", [])
    assert png_size(plot_training_curves(empty)) == (1600, 450)
    with pytest.raises(DataError, match="metrics.jsonl"):
        plot_training_curves(str(tmp_path / "no_run"))
