"""Checkpoint files: loading weights (layouts, module. prefixes, EMA choice, head dropping, errors
by name), RNG states through a weights-only load, snapshot rotation, keep_last, damaged files."""
import argparse
import collections
import logging
import os
import random

import numpy as np
import pytest
import torch

from libs.core.errors import CheckpointError
from libs.engine.checkpoint import Checkpointer, load_checkpoint, load_file
from libs.engine.rng_state import capture_rng_state, restore_rng_state
from libs.modeling import make_meta_arch
from libs.utils.io import torch_save

SMALL = dict(
    backbone_arch=[2, 1, 1, 0, 2], input_vid_dim=6, input_txt_dim=5, max_seq_len=64, n_head=2,
    n_mha_win_size=9, embd_dim=8, fpn_dim=8, head_dim=8, use_abs_pe=True,
    regression_range=[[0, 4], [2, 8], [4, 10000]],
)


def model(seed=0, **overrides):
    torch.manual_seed(seed)
    return make_meta_arch("LocPointTransformer", **{**SMALL, **overrides})


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def reference_checkpoint(raw, ema, prefix="module."):
    """The reference's layout: DDP prefixes, optimizer and scheduler state, EMA weights."""
    optimizer = torch.optim.AdamW(raw.parameters(), lr=1e-3)
    return {
        "epoch": 3,
        "state_dict": collections.OrderedDict((prefix + k, v) for k, v in raw.state_dict().items()),
        "state_dict_ema": collections.OrderedDict((prefix + k, v) for k, v in ema.state_dict().items()),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": 7, "base_lrs": [1e-3], "_last_lr": [1e-3], "warmup_epochs": 5},
    }


def test_reference_layout_from_file_with_prefix_and_ema_choice(tmp_path):
    raw, ema = model(1), model(2)
    path = tmp_path / "epoch_003.pth.tar"
    torch.save(reference_checkpoint(raw, ema), path)
    target = model(0)
    info = load_checkpoint(target, str(path))
    assert info["epoch"] == 3 and info["missing"] == [] and info["unexpected"] == []
    assert same_weights(target, raw)
    load_checkpoint(target, str(path), use_ema=True)
    assert same_weights(target, ema)


def test_bare_state_dict_and_ddp_wrapped_model():
    source = model(1)
    target = model(0)
    wrapper = torch.nn.Module()
    wrapper.module = target
    load_checkpoint(wrapper, source.state_dict())
    assert same_weights(target, source)


def test_wrong_architecture_names_keys_and_shapes():
    other = model(1, backbone_arch=[2, 1, 1, 2, 0])  # GroundNLQ*: extra cross-attention keys
    with pytest.raises(CheckpointError, match=r"unexpected keys backbone\.branch\.0\.cross_attn"):
        load_checkpoint(model(0), other.state_dict())
    wider = model(1, embd_dim=12, fpn_dim=12, head_dim=12)
    with pytest.raises(CheckpointError, match=r"shape mismatch for backbone\.vid_embd\.0\.conv\.weight: checkpoint \(12, 6, 3\)"):
        load_checkpoint(model(0), wider.state_dict())
    partial = {k: v for k, v in model(1).state_dict().items() if not k.startswith("neck.")}
    with pytest.raises(CheckpointError, match=r"missing keys neck\.fpn_norms\.0\.weight"):
        load_checkpoint(model(0), partial)
    info = load_checkpoint(model(0), partial, strict=False)
    assert "neck.fpn_norms.0.weight" in info["missing"]


def test_drop_heads_keeps_initial_heads_and_loads_the_rest():
    source, target = model(1), model(0)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if "head" in k}
    info = load_checkpoint(target, {"state_dict": source.state_dict()}, drop_heads=True)
    assert info["dropped"] and all("head" in k for k in info["dropped"])
    state = target.state_dict()
    assert all(torch.equal(state[k], v) for k, v in heads_before.items())
    assert torch.equal(state["backbone.vid_embd.0.conv.weight"], source.state_dict()["backbone.vid_embd.0.conv.weight"])


def test_missing_ema_missing_file_and_untrusted_objects(tmp_path):
    with pytest.raises(CheckpointError, match="state_dict_ema"):
        load_checkpoint(model(0), {"state_dict": model(1).state_dict()}, use_ema=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(model(0), str(tmp_path / "nope.pth"))
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": model(1).state_dict(), "extra": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="trust=True"):
        load_checkpoint(model(0), str(path))
    target = model(0)
    load_checkpoint(target, str(path), trust=True)
    assert same_weights(target, model(1))


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


def test_resuming_removes_the_temporaries_of_killed_writes(tmp_path):
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save_snapshot({"progress": {}, "model": {}})
    (tmp_path / ".snapshot_last.pth.k2x9q1.tmp").write_bytes(b"")  # a write killed midway
    (tmp_path / ".epoch_003.pth.tar.a8b7.tmp").write_bytes(b"half")
    (tmp_path / ".notes.txt.tmp").write_text("not ours: kept")
    path, _ = checkpointer.find_resumable()
    assert path.endswith("snapshot_last.pth")
    assert sorted(os.listdir(tmp_path)) == [".notes.txt.tmp", "snapshot_last.pth"]
