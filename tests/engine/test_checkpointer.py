"""Snapshot files: RNG states through a weights-only load, rotation, keep_last, skipping damaged files."""
import logging
import os
import random

import numpy as np
import pytest
import torch

from libs.core.errors import CheckpointError
from libs.engine.checkpointer import (
    Checkpointer,
    capture_rng_state,
    load_file,
    restore_rng_state,
)
from libs.utils.io import torch_save


def _draws(generator):
    return (random.random(), np.random.rand(), np.random.randn(), torch.rand(2).tolist(),
            torch.rand(1, generator=generator).item())


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(11)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in NumPy's state
    torch_save({"rng": capture_rng_state(generator)}, str(tmp_path / "s.pth"))
    expected = _draws(generator)
    for _ in range(3):
        _draws(generator)
    state = torch.load(tmp_path / "s.pth", weights_only=True)["rng"]
    restore_rng_state(state, generator)
    assert _draws(generator) == expected


def test_snapshot_rotation_and_resume_finds_newest(tmp_path):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save_snapshot({"progress": {"iter": 1}})
    ckpt.save_snapshot({"progress": {"iter": 2}})
    assert sorted(os.listdir(tmp_path)) == ["snapshot_last.pth", "snapshot_prev.pth"]
    assert load_file(str(tmp_path / "snapshot_prev.pth"))["progress"]["iter"] == 1
    path, state = ckpt.find_resumable()
    assert path.endswith("snapshot_last.pth") and state["progress"]["iter"] == 2


def test_truncated_snapshot_is_skipped_with_a_warning(tmp_path, caplog):
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save_snapshot({"progress": {"iter": 1}, "w": torch.zeros(1000)})
    ckpt.save_snapshot({"progress": {"iter": 2}, "w": torch.zeros(1000)})
    last = tmp_path / "snapshot_last.pth"
    last.write_bytes(last.read_bytes()[:300])  # a disk-level truncation
    with caplog.at_level(logging.WARNING, logger="groundnlq"):
        path, state = ckpt.find_resumable()
    assert path.endswith("snapshot_prev.pth") and state["progress"]["iter"] == 1
    assert "snapshot_last.pth" in caplog.text


def test_no_snapshot_means_none(tmp_path):
    torch_save({"epoch": 0, "state_dict": {}}, str(tmp_path / "snapshot_foreign.pth"))
    assert Checkpointer(str(tmp_path)).find_resumable() is None


def test_keep_last_epoch_checkpoints(tmp_path):
    ckpt = Checkpointer(str(tmp_path), keep_last=2)
    for epoch in range(4):
        ckpt.save_epoch_checkpoint(epoch, {"epoch": epoch})
    assert sorted(os.listdir(tmp_path)) == ["epoch_002.pth.tar", "epoch_003.pth.tar"]
    keep_all = Checkpointer(str(tmp_path / "all"), keep_last=0)
    for epoch in range(3):
        keep_all.save_epoch_checkpoint(epoch, {"epoch": epoch})
    assert len(keep_all.epoch_checkpoints()) == 3


def test_load_file_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_file(str(tmp_path / "missing.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_file(str(bad))
    torch_save([1, 2], str(tmp_path / "list.pth"))
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_file(str(tmp_path / "list.pth"))
