"""Every user-facing flow on tiny demo data, through the real commands: training from scratch and
finetuning through the torchrun launchers, narration-style pretraining (jittered windows),
evaluation on val (recall printed, files written) and test (submission only), scoring a saved
file, and ensembling two models' predictions."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from libs.core.config import load_config
from tests.conftest import ROOT
from tests.tiny_run import make_tiny_run, run_env, run_tool

METRIC_KEYS = ("R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "R10@0.3", "R10@0.5", "mIoU", "num_queries")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("h5py")
    return make_tiny_run(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def scratch_run(tiny):
    """From scratch through the single-GPU launcher (one CPU process here), evaluating each epoch."""
    config, out = tiny
    result = run_tool("tools/train_ego4d_singlegpu.sh", config, "scratch", "",
                      "--opt", "trainer.eval_freq=1", "trainer.snapshot_freq=0")
    assert "torchrun" in result.stderr
    return out / "tiny_scratch"


def test_scratch_training_writes_a_self_describing_run_folder(scratch_run):
    for name in ("config.yaml", "config.txt", "train.log", "metrics.jsonl", "eval_results.jsonl",
                 "epoch_000.pth.tar", "epoch_001.pth.tar", "model_best.pth.tar", "snapshot_last.pth"):
        assert (scratch_run / name).is_file(), name
    assert any((scratch_run / "logs").iterdir()), "TensorBoard events"
    evaluations = [json.loads(line) for line in (scratch_run / "eval_results.jsonl").read_text().splitlines()]
    assert len(evaluations) == 2 and all("R1@0.5" in e for e in evaluations)


def test_eval_val_prints_recall_and_writes_predictions_submission_metrics(tiny, scratch_run, tmp_path):
    config, _ = tiny
    result = run_tool("eval.py", config, scratch_run / "model_best.pth.tar", "--out", tmp_path, "--no-progress")
    assert "R1@0.5" in result.stdout or "Rank@1" in result.stdout
    metrics = json.loads((tmp_path / "val_model_best_metrics.json").read_text())
    assert all(key in metrics for key in METRIC_KEYS)
    submission = json.loads((tmp_path / "val_model_best_submission.json").read_text())
    assert submission["version"] == "1.0" and submission["challenge"] == "ego4d_nlq_challenge"
    assert len(submission["results"]) == metrics["num_queries"]
    assert all(len(r["predicted_times"]) == 5 for r in submission["results"])

    # scoring the saved submission with the official metric gives the same numbers
    data = (tiny[1].parent / "demo")
    rescored = tmp_path / "rescored.json"
    run_tool("eval.py", "--pred-file", tmp_path / "val_model_best_submission.json",
             "--gt-file", data / "nlq_val.json", "--json-out", rescored)
    again = json.loads(rescored.read_text())
    for key in METRIC_KEYS:
        assert again[key] == pytest.approx(metrics[key]), key


@pytest.mark.parametrize("video_centric", [True, False])
def test_eval_under_torchrun_splits_the_work_and_writes_once(tiny, scratch_run, tmp_path, video_centric):
    """Two processes (gloo) through the inference launcher: each evaluates a block of the split,
    rank 0 prints the table once and writes the files, and the predictions are one process's."""
    config, _ = tiny
    checkpoint = scratch_run / "model_best.pth.tar"
    opts = ["--opt", "loader.eval_batch_size=2", f"loader.video_centric={str(video_centric).lower()}"]
    run_tool("eval.py", config, checkpoint, "--out", tmp_path / "one", "--no-progress", *opts)
    two = subprocess.run(["bash", "tools/inference_ego4d_nlq.sh", config, checkpoint, "", "--out",
                          tmp_path / "two", "--no-progress", *opts], cwd=ROOT, env={**run_env(), "NPROC": "2"},
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "--nproc_per_node=2" in two.stderr
    assert two.stdout.count("mIoU") == 1 and two.stdout.count("wrote ") == 3
    for name in ("val_model_best_predictions.json", "val_model_best_submission.json", "val_model_best_metrics.json"):
        one = json.loads((tmp_path / "one" / name).read_text())
        other = json.loads((tmp_path / "two" / name).read_text())
        assert one == other, name


def test_eval_test_split_writes_a_valid_submission_without_scoring(tiny, scratch_run, tmp_path):
    config, _ = tiny
    result = run_tool("eval.py", config, scratch_run / "epoch_001.pth.tar", "--split", "test",
                      "--out", tmp_path, "--no-progress")
    assert "R1@0.5" not in result.stdout
    submission = json.loads((tmp_path / "test_epoch_001_submission.json").read_text())
    test_records = (tiny[1].parent / "demo" / "ego4d_nlq_test_v2.jsonl").read_text().splitlines()
    assert len(submission["results"]) == len(test_records)
    assert not list(tmp_path.glob("test_*metrics*"))


def test_finetune_launcher_and_ensemble_of_two_models(tiny, scratch_run, tmp_path):
    config, out = tiny
    run_tool("tools/train_ego4d_finetune_head_onegpu.sh", config, scratch_run / "epoch_001.pth.tar", "ft", "",
             "--opt", "opt.epochs=1", "opt.warmup_epochs=0")
    finetuned = out / "tiny_ft" / "epoch_000.pth.tar"
    assert finetuned.is_file()

    preds = []
    for name, ckpt in (("a", scratch_run / "epoch_001.pth.tar"), ("b", finetuned)):
        run_tool("eval.py", config, ckpt, "--out", tmp_path / name, "--no-progress")
        preds.append(next((tmp_path / name).glob("val_*_predictions.json")))
    data = out.parent / "demo"
    for method in ("reference", "weighted"):
        fused = tmp_path / f"ensemble_{method}.json"
        run_tool("ensemble.py", *preds, "--out", fused, "--method", method, "--gt", data / "nlq_val.json")
        submission = json.loads(fused.read_text())
        assert all(len(r["predicted_times"]) == 5 for r in submission["results"])
        run_tool("eval.py", "--pred-file", fused, "--gt-file", data / "nlq_val.json")


def test_narration_pretraining_flow_with_jittered_windows(tiny):
    """The pretraining config's switches (narration dataset name, temporal jittering) on demo data."""
    config, out = tiny
    run_tool("tools/pretrain_ego4d_narration.sh", config, "pretrain",
             "--opt", "dataset_name=ego4d_narration", "dataset.enable_temporal_jittering=true", "opt.epochs=1",
             "opt.warmup_epochs=0")
    assert (out / "tiny_pretrain" / "epoch_000.pth.tar").is_file()


def test_a_short_config_on_the_demo_config_trains_the_demo(tmp_path):
    """The README's promise: a user's variant is a few lines on a base (here the shipped demo
    config, whose relative data paths resolve against the working directory)."""
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_demo_data.py"), "--out", str(tmp_path / "data" / "demo"),
                    "--num-train-clips", "2", "--num-val-clips", "1", "--num-test-clips", "1"],
                   check=True, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL)
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_base_: {os.path.join(ROOT, 'configs', 'demo.yaml')}\n"
                    "opt: {epochs: 1, warmup: false}\n"
                    "loader: {batch_size: 8}\n"
                    "trainer: {eval_freq: 1, snapshot_freq: 0}\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), str(mine), "--output", "short"],
                            cwd=tmp_path, env=run_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    run = tmp_path / "ckpt" / "mine_short"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["opt"]["epochs"] == 1 and saved["loader"]["batch_size"] == 8
    assert saved["model"]["embd_dim"] == load_config(os.path.join(ROOT, "configs", "demo.yaml"))["model"]["embd_dim"]
    assert (run / "model_best.pth.tar").is_file() and "R1@0.5" in (run / "eval_results.jsonl").read_text()
