"""Fault tolerance: a training killed with SIGKILL mid-epoch and restarted with ``--resume auto``
ends with exactly the weights of an uninterrupted run (CPU, one thread, no loader workers)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT
from tests.tiny_run import make_tiny_run, run_env as _env


def _train_cmd(config, name, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), config, "--output", name, *extra]


def _final_weights(folder):
    ckpt = torch.load(os.path.join(folder, "epoch_001.pth.tar"), map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["state_dict_ema"], ckpt["optimizer"]["state"]


@pytest.fixture(scope="module")
def tiny_run_config(tmp_path_factory):
    pytest.importorskip("h5py")
    return make_tiny_run(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def straight_run(tiny_run_config):
    """An uninterrupted run (2 epochs); its folder."""
    config, out = tiny_run_config
    subprocess.run(_train_cmd(config, "straight"), check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
    return out / "tiny_straight"


def test_sigkill_then_resume_auto_is_bit_identical(tiny_run_config, straight_run):
    config, out = tiny_run_config

    killed = out / "tiny_killed"
    proc = subprocess.Popen(_train_cmd(config, "killed"), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "snapshot_last.pth").exists():
        assert proc.poll() is None, "training ended before its first snapshot"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "epoch_001.pth.tar").exists()
    snapshot = torch.load(killed / "snapshot_last.pth", map_location="cpu", weights_only=True)
    assert snapshot["progress"]["inner_iter"] > 0, "the kill should land in the middle of an epoch"

    result = subprocess.run(_train_cmd(config, "killed", "--resume", "auto"), cwd=ROOT, env=_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed from" in result.stdout

    straight, straight_ema, straight_opt = _final_weights(straight_run)
    resumed, resumed_ema, resumed_opt = _final_weights(killed)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
        assert torch.equal(straight_ema[key], resumed_ema[key]), key
    for index, state in straight_opt.items():
        assert torch.equal(state["exp_avg"], resumed_opt[index]["exp_avg"])


def test_finetune_reinitialises_heads_and_starts_ema_from_loaded_model(tiny_run_config, straight_run):
    """The reference's spelling ``--resume CKPT --resume_from_pretrain True`` = ``--pretrained CKPT``."""
    config, out = tiny_run_config
    pretrained = straight_run / "epoch_001.pth.tar"
    subprocess.run(_train_cmd(config, "finetune", "--resume", str(pretrained), "--resume_from_pretrain", "True",
                              "--opt", "opt.epochs=1", "opt.warmup_epochs=0"),
                   check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
    loaded = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
    tuned = torch.load(out / "tiny_finetune" / "epoch_000.pth.tar", map_location="cpu", weights_only=True)
    ema = tuned["state_dict_ema"]
    head_keys = [k for k in loaded if "head" in k]
    assert head_keys and len(head_keys) < len(loaded)
    for key, value in loaded.items():
        if "head" in key or not value.is_floating_point():
            continue
        # a few steps of EMA (decay 0.999) away from the loaded backbone, not from a random init
        assert (ema[key] - value).abs().max() < 1e-3, key
    assert any((ema[k] - loaded[k]).abs().max() > 1e-3 for k in head_keys if loaded[k].ndim > 1)


def test_command_line_parsing_and_errors(tiny_run_config):
    import train

    args = train.parse_args(["c.yaml", "--resume", "x.pth", "--resume_from_pretrain", "True"])
    assert (args.pretrained, args.resume) == ("x.pth", None)
    args = train.parse_args(["c.yaml", "--resume", "x.pth", "--resume_from_pretrain", "False"])
    assert (args.pretrained, args.resume) == (None, "x.pth")
    with pytest.raises(SystemExit):
        train.parse_args(["c.yaml", "--resume_from_pretrain", "maybe"])

    config, _ = tiny_run_config
    result = subprocess.run(_train_cmd(config, "bad", "--opt", "opt.learning_rat=1"), cwd=ROOT, env=_env(),
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "opt.learning_rat" in lines[0]


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.fixture(scope="module")
def straight_two_process_run(tiny_run_config):
    config, out = tiny_run_config
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             os.path.join(ROOT, "train.py"), config, "--output", "straight2"],
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out / "tiny_straight2"


def test_torchrun_restart_after_a_crashed_worker_resumes_by_itself(tiny_run_config, straight_two_process_run):
    """``torchrun --nproc_per_node=2 --max-restarts=1`` (plain torchrun: not the launchers, so without
    their TORCH_DISABLE_SHARE_RDZV_TCP_STORE): one of the two workers is SIGKILLed mid-epoch; the
    restarted workers reconnect, pick up the newest snapshot without being told and end with the
    uninterrupted two-process run's weights."""
    config, out = tiny_run_config
    run = out / "tiny_elastic"
    env = _env()
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "--max-restarts=1", os.path.join(ROOT, "train.py"), config, "--output", "elastic"],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "snapshot_last.pth").exists():
        assert agent.poll() is None, "training ended before its first snapshot"
        assert time.time() < deadline
        time.sleep(0.05)
    workers = _children(agent.pid)
    assert len(workers) == 2, "torchrun should have two worker processes"
    os.kill(workers[-1], signal.SIGKILL)
    try:
        output, _ = agent.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        agent.kill()
        pytest.fail("the restarted workers hung")
    assert agent.returncode == 0, output
    assert "resumed from" in output
    log = (run / "train.log").read_text().splitlines()
    restart = [i for i, line in enumerate(log) if "run folder" in line][1]
    assert "ERROR] training stopped at epoch" in log[restart - 1], log[restart - 3:restart + 1]  # not "Final ..."

    straight, straight_ema, _ = _final_weights(straight_two_process_run)
    resumed, resumed_ema, _ = _final_weights(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
        assert torch.equal(straight_ema[key], resumed_ema[key]), key
