"""A tiny demo dataset and config for tests that run the real command-line tools in subprocesses."""
import os
import subprocess
import sys

from tests.conftest import ROOT

TINY_CONFIG = """
dataset_name: ego4d
train_split: ['training']
val_split: ['validation']
output_folder: {out}
init_rand_seed: 7
dataset:
  json_file: {data}/nlq_val.json
  train_jsonl_file: {data}/ego4d_nlq_train_v2.jsonl
  val_jsonl_file: {data}/ego4d_nlq_val_v2.jsonl
  test_jsonl_file: {data}/ego4d_nlq_test_v2.jsonl
  video_feat_dir: {data}/video_features.h5
  text_feat_dir: {data}/text_features.h5
  val_text_feat_dir: {data}/text_features.h5
  input_vid_dim: 16
  input_txt_dim: 8
  max_seq_len: 1024
  feat_stride: 16.043
  num_frames: 16.043
  default_fps: 30
loader: {{batch_size: 6, num_workers: 0}}
model:
  n_mha_win_size: 9
  backbone_arch: [1, 1, 1, 0, 2]
  n_head: 2
  embd_dim: 16
  fpn_dim: 16
  head_dim: 16
  use_abs_pe: true
  regression_range: [[0, 4], [2, 8], [4, 10000]]
opt: {{learning_rate: 1.0e-3, epochs: 1, warmup_epochs: 1, weight_decay: 0.05}}
train_cfg: {{clip_grad_l2norm: 1.0, droppath: 0.1}}
trainer: {{amp: none, print_freq: 100, snapshot_freq: 2, eval_freq: 0, keep_last: 0}}
"""


def run_env() -> dict:
    """One thread, unbuffered output, no inherited torchrun variables; launchers use this Python."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHON=sys.executable)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def make_tiny_run(tmp) -> tuple:
    """Write a tiny demo (2 train / 1 val / 1 test clips) and its config under ``tmp``.

    Returns ``(config path, output folder)``; runs land in ``<output>/tiny_<name>``."""
    data = tmp / "demo"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_demo_data.py"), "--out", str(data),
                    "--num-train-clips", "2", "--num-val-clips", "1", "--num-test-clips", "1",
                    "--video-dim", "16", "--text-dim", "8"], check=True, cwd=ROOT, env=run_env(),
                   stdout=subprocess.DEVNULL)
    config = tmp / "tiny.yaml"
    config.write_text(TINY_CONFIG.format(out=tmp / "out", data=data))
    return str(config), tmp / "out"


def run_tool(*argv, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python <argv...>`` (or ``bash <script>`` for ``.sh``) from the repository root."""
    program = ["bash"] if argv[0].endswith(".sh") else [sys.executable]
    result = subprocess.run([*program, *map(str, argv)], cwd=ROOT, env=run_env(), capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result
