"""Bad input and faults, fed to the real commands and public functions (issue 8).

One test per row of the table in ``tests/README.md``: each asserts the one-line message names the
file, key or id at fault and what was expected, that a command exits with status 2, and that no
partial output (or temporary file) is left behind.
"""
import copy
import json
import logging
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ensemble as ensemble_cli
import eval as eval_cli
import train as train_cli
from ego4d_data import reformat_data
from feature_extraction import convert_features
from libs.core.config import load_config
from libs.core.errors import CheckpointError, ConfigError, DataError
from libs.datasets.annotations import official_to_records, read_jsonl
from libs.datasets.demo import make_demo_data
from libs.datasets.feature_store import open_store, write_store
from libs.engine import hooks as H
from libs.engine.checkpoint import Checkpointer
from libs.engine.trainer import NonFiniteLossError
from libs.engine.checkpoint import load_checkpoint, read_checkpoint
from libs.modeling.models import make_meta_arch
from libs.utils.cli import run_command
from libs.utils.io import save_json, torch_save
from libs.evaluation.submission import validate_submission
from tests.tiny_run import TINY_CONFIG
from tests.conftest import ROOT
from tests.engine.test_trainer import ToyModel, build_trainer, standard_hooks, toy_items, toy_loader

FEW_EXAMPLES = settings(max_examples=25, deadline=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture])
DEMO = dict(num_train_clips=2, num_val_clips=2, num_test_clips=1, video_dim=16, text_dim=8)


# ---------------------------------------------------------------- helpers
def listing(folder):
    """Every entry under ``folder`` (hidden and temporary files included), relative paths."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def user_error(main, argv, capsys):
    """Run a command's ``main``; assert exit status 2 and one ``error:`` line; return that line."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def official(queries=None, clip_uid="c1", annotation_uid="a1", end=100.0):
    """An official NLQ json (v2) with one clip of ``end`` seconds and one annotation."""
    if queries is None:
        queries = [{"clip_start_sec": 10.0, "clip_end_sec": 20.0, "query": "where is the cup?"},
                   {"clip_start_sec": 30.0, "clip_end_sec": 40.0, "query": "who did I talk to?"}]
    clip = {"clip_uid": clip_uid, "video_start_sec": 0.0, "video_end_sec": end,
            "annotations": [{"annotation_uid": annotation_uid, "language_queries": queries}]}
    return {"version": "2.0", "videos": [{"video_uid": "v1", "clips": [clip]}]}


def record(query_id="a1_0", **changes):
    base = {"query": "where is the cup?", "query_id": query_id, "duration": 100.0, "video_id": "c1",
            "query_type": "nlq", "timestamps": [[10.0, 20.0]]}
    base.update(changes)
    return base


@pytest.fixture
def quiet_train_logs():
    """``train.main`` in this process points the ``groundnlq`` logger at pytest's captured streams:
    put its handlers back afterwards so later tests do not log into closed streams."""
    logger = logging.getLogger("groundnlq")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def write_text(path, text):
    path.write_text(text)
    return str(path)


def write_jsonl(path, records):
    return write_text(path, "\n".join(json.dumps(r) for r in records))


def submission(results):
    return {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}


# ---------------------------------------------------------------- a tiny dataset, config and checkpoint
# (the config template is the one of the other command-line tests: tests/tiny_run.py)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Demo data (2 val clips), a tiny config and a matching checkpoint; tests copy what they change."""
    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    make_demo_data(str(data), seed=0, **DEMO)
    config = write_text(root / "tiny.yaml", TINY_CONFIG.format(out=root / "runs", data=data))
    cfg = load_config(config)
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    checkpoint = root / "epoch_000.pth.tar"
    torch.save({"epoch": 0, "state_dict": model.state_dict(), "state_dict_ema": model.state_dict()}, checkpoint)
    return {"root": root, "data": data, "config": config, "checkpoint": str(checkpoint), "cfg": cfg}


def eval_argv(tiny, out, *extra, checkpoint=None):
    return [tiny["config"], checkpoint or tiny["checkpoint"], "--out", str(out), "--device", "cpu",
            "--no-progress", *extra]


def poisoned_store(tiny, path, what, change):
    """A copy of the demo's video (``what="video"``) or text store with the array of the first
    val query (its clip or its text) changed; returns that array's id."""
    source = open_store(str(tiny["data"] / f"{what}_features.h5"))
    arrays = {key: source[key] for key in source.keys()}
    first_val_query = read_jsonl(tiny["cfg"]["dataset"]["val_jsonl_file"], require_timestamps=True)[0]
    key = first_val_query["video_id" if what == "video" else "query_id"]
    arrays[key] = change(arrays[key].copy())
    write_store(str(path), sorted(arrays.items()), kind="hdf5")
    return key


# ================================================================ annotations: official json
def run_reformat(tmp_path, capsys, text):
    src, out = tmp_path / "official", tmp_path / "out"
    src.mkdir()
    write_text(src / "nlq_val.json", text)
    message = user_error(reformat_data.main, ["--input_file_dir", str(src), "--output_dir", str(out)], capsys)
    assert not out.exists() or listing(out) == []  # nothing written, not even a temporary file
    return message, str(src / "nlq_val.json")


def test_official_json_malformed(tmp_path, capsys):
    message, path = run_reformat(tmp_path, capsys, '{"videos": [oops]}')
    assert message == f"error: {path}: not valid JSON (line 1: Expecting value)"


def test_official_json_truncated(tmp_path, capsys):
    text = json.dumps(official())
    message, path = run_reformat(tmp_path, capsys, text[: len(text) // 2])
    assert message.startswith(f"error: {path}: not valid JSON (line 1:")


@pytest.mark.parametrize("drop, expected", [
    ("clip_uid", "videos[0].clips[0]: missing key 'clip_uid'"),
    ("clip_end_sec", "clip c1 annotation a1 language_queries[0]: missing key 'clip_end_sec'"),
])
def test_official_json_missing_field(tmp_path, capsys, drop, expected):
    data = official()
    clip = data["videos"][0]["clips"][0]
    (clip if drop in clip else clip["annotations"][0]["language_queries"][0]).pop(drop)
    message, path = run_reformat(tmp_path, capsys, json.dumps(data))
    assert message == f"error: {path}: {expected}"


def test_official_window_end_before_start(tmp_path, capsys):
    data = official([{"clip_start_sec": 20.0, "clip_end_sec": 10.0, "query": "where?"}])
    message, path = run_reformat(tmp_path, capsys, json.dumps(data))
    assert message == (f"error: {path}: clip c1 annotation a1 language_queries[0]: "
                       "clip_end_sec 10.0 must be >= clip_start_sec 20.0")


def test_official_window_outside_clip(tmp_path, capsys):
    data = official([{"clip_start_sec": 120.0, "clip_end_sec": 130.0, "query": "where?"}])
    message, path = run_reformat(tmp_path, capsys, json.dumps(data))
    assert message == (f"error: {path}: clip c1 annotation a1 language_queries[0]: clip_start_sec 120.0 "
                       "is after the clip's end (100.0 s); expected a window inside the clip")


def test_official_duplicate_query_ids(tmp_path, capsys):
    data = official()
    data["videos"].append(copy.deepcopy(data["videos"][0]))
    data["videos"][1]["clips"][0]["clip_uid"] = "c2"  # same annotation_uid in a second clip
    message, path = run_reformat(tmp_path, capsys, json.dumps(data))
    assert message == (f"error: {path}: clip c2 annotation a1 language_queries[0]: duplicate query_id "
                       "'a1_0' (annotation_uid 'a1' appears twice; first in clip c1)")


def test_official_empty_or_whitespace_query_is_skipped_and_counted():
    # spec 3: the reference skips queries without text; ids keep their index (a1_2 stays a1_2)
    queries = [{"clip_start_sec": 1.0, "clip_end_sec": 2.0, "query": text} for text in ("", "  \t", None, "cup?")]
    records, summary = official_to_records(official(queries), "val", source="nlq_val.json")
    assert [r["query_id"] for r in records] == ["a1_3"]
    assert summary["skipped"] == {"empty query": 3} and summary["queries"] == 4


REQUIRED_OFFICIAL = [("clip", "clip_uid"), ("clip", "video_start_sec"), ("clip", "video_end_sec"),
                     ("clip", "annotations"), ("annotation", "annotation_uid"),
                     ("annotation", "language_queries"), ("query", "clip_start_sec"), ("query", "clip_end_sec")]


@FEW_EXAMPLES
@given(target=st.sampled_from(REQUIRED_OFFICIAL),
       value=st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
                       st.floats(allow_nan=True), st.just("<missing>")))
def test_official_json_property_any_bad_field_is_a_data_error(target, value):
    """Whatever a required field holds (or lacks), conversion succeeds or raises a DataError naming
    the file: never a KeyError or TypeError from inside."""
    data = official()
    clip = data["videos"][0]["clips"][0]
    owner = {"clip": clip, "annotation": clip["annotations"][0],
             "query": clip["annotations"][0]["language_queries"][0]}[target[0]]
    if value == "<missing>":
        owner.pop(target[1])
    else:
        owner[target[1]] = value
    name = target[1]
    plausible = (isinstance(value, float) and np.isfinite(value) if name.endswith("_sec")
                 else isinstance(value, str) and value != "" if name.endswith("_uid")
                 else isinstance(value, list))
    try:
        official_to_records(data, "val", source="nlq_val.json")
    except DataError as err:
        assert str(err).startswith("nlq_val.json: ")
    else:
        assert plausible, f"{name}={value!r} was accepted"


# ================================================================ annotations: jsonl records
@pytest.mark.parametrize("bad_line, expected", [
    ('{"query": "x", "query_id": ', r":2: not valid JSON \(Expecting value\)"),
    (json.dumps({k: v for k, v in record("a1_1").items() if k != "duration"}),
     r":2 \(query_id a1_1\): 'duration' must be a positive number of seconds, got None"),
    (json.dumps(record("a1_1", timestamps=[[20.0, 10.0]])),
     r":2 \(query_id a1_1\): timestamp end 10.0 is before start 20.0"),
    (json.dumps(record("a1_1", timestamps=[[150.0, 160.0]])),
     r":2 \(query_id a1_1\): timestamp \[150.0, 160.0\] lies outside the clip \[0, 100.0\] s"),
    (json.dumps(record("a1_1", query="")),
     r":2 \(query_id a1_1\): needs a string 'query' \(or 'narration_query'\) with some text, got ''"),
    (json.dumps(record("a1_1", query=" \t ")),
     r":2 \(query_id a1_1\): needs a string 'query' \(or 'narration_query'\) with some text, got ' \\t '"),
    (json.dumps(record("a1_0")), r":2: duplicate query_id 'a1_0' \(first on line 1\)"),
], ids=["malformed", "missing-field", "end-before-start", "outside-clip", "empty-query",
        "whitespace-query", "duplicate-id"])
def test_jsonl_bad_record(tmp_path, bad_line, expected):
    path = write_text(tmp_path / "train.jsonl", json.dumps(record("a1_0")) + "\n" + bad_line)
    with pytest.raises(DataError, match="^" + path.replace(".", r"\.") + expected + "$"):
        read_jsonl(path, require_timestamps=True)


@FEW_EXAMPLES
@given(start=st.floats(-50, 150), length=st.floats(-20, 50))
def test_jsonl_property_windows_inside_clip_or_error(tmp_path_factory, start, length):
    """A window is accepted iff it ends after it starts and overlaps the clip [0, 100] s (windows
    running past the clip are kept, as the reference keeps them)."""
    window = [start, start + length]
    path = write_jsonl(tmp_path_factory.mktemp("w") / "a.jsonl", [record(timestamps=[window])])
    valid = window[1] >= window[0] and window[1] >= 0 and window[0] <= 100.0
    if valid:
        assert read_jsonl(path, require_timestamps=True)[0]["timestamps"] == [window]
    else:
        with pytest.raises(DataError, match=r"\(query_id a1_0\): timestamp"):
            read_jsonl(path, require_timestamps=True)


def test_train_cli_bad_annotations_leave_no_checkpoint(tiny, tmp_path, capsys, quiet_train_logs):
    bad = write_jsonl(tmp_path / "dup.jsonl", [record("a1_0"), record("a1_0")])
    message = user_error(train_cli.main, [tiny["config"], "--output", "dup", "--opt",
                                          f"dataset.train_jsonl_file={bad}", f"output_folder={tmp_path}/runs"],
                         capsys)
    assert message == f"error: {bad}:2: duplicate query_id 'a1_0' (first on line 1)"
    # failed before its first step: the run folder it made (config, log, event files) is gone again
    assert listing(tmp_path / "runs") == []


def test_train_cli_failure_after_the_first_step_keeps_the_run_folder(tiny, tmp_path, capsys, quiet_train_logs,
                                                                      monkeypatch):
    from libs.engine.trainer import SimpleTrainer

    real_step = SimpleTrainer.run_step

    def fail_on_second_step(self):
        if self.iter >= 1:
            raise DataError("feature store went away")
        return real_step(self)

    monkeypatch.setattr(SimpleTrainer, "run_step", fail_on_second_step)
    message = user_error(train_cli.main, [tiny["config"], "--output", "late", "--opt", f"output_folder={tmp_path}/runs"],
                         capsys)
    assert message == "error: feature store went away"
    kept = listing(tmp_path / "runs")
    assert {"tiny_late/config.yaml", "tiny_late/train.log"} <= set(kept)
    assert "training stopped at epoch 0 step 1" in (tmp_path / "runs" / "tiny_late" / "train.log").read_text()


@pytest.mark.parametrize("key", ["train_jsonl_file", "video_feat_dir", "text_feat_dir", "val_jsonl_file",
                                 "val_text_feat_dir", "json_file"])
def test_train_cli_a_missing_path_it_would_read_fails_before_anything_is_written(tiny, tmp_path, capsys, key):
    missing = str(tmp_path / "nope" / f"{key}.x")
    argv = [tiny["config"], "--output", "p", "--opt", f"output_folder={tmp_path}/runs", f"dataset.{key}={missing}",
            "trainer.eval_freq=1"]
    message = user_error(train_cli.main, argv, capsys)
    assert message.startswith(f"error: override: dataset.{key} = {missing!r} does not exist")
    assert not (tmp_path / "runs").exists()


def test_eval_cli_a_missing_path_fails_with_the_file_that_set_it(tiny, tmp_path, capsys):
    config = write_text(tmp_path / "mine.yaml", f"_base_: {tiny['config']}\ndataset:\n  json_file: gt_typo.json\n")
    argv = eval_argv(tiny, tmp_path / "out")
    message = user_error(eval_cli.main, [config] + argv[1:], capsys)
    assert message.startswith(f"error: config file {config}: dataset.json_file = 'gt_typo.json' does not exist")
    assert not (tmp_path / "out").exists()


# ================================================================ features
def dataset_item(tiny, **changes):
    from libs.datasets.datasets import make_dataset

    cfg = tiny["cfg"]
    return make_dataset(cfg["dataset_name"], False, cfg["val_split"], **{**cfg["dataset"], **changes})


@pytest.mark.parametrize("what, value", [("video", np.nan), ("text", np.inf), ("text", -np.inf)])
def test_non_finite_features(tiny, tmp_path, what, value):
    def poison(array):
        array[0, 0] = value
        return array

    store = tmp_path / f"{what}.h5"
    key = poisoned_store(tiny, store, what, poison)
    dataset = dataset_item(tiny, **{("video_feat_dir" if what == "video" else "val_text_feat_dir"): str(store)})
    index = next(i for i, r in enumerate(dataset.records) if key in (r["video_id"], r["query_id"]))
    with pytest.raises(DataError) as err:
        dataset[index]
    assert str(err.value) == f"{what} features of id {key!r} in {store} contain NaN or Inf"


@FEW_EXAMPLES
@given(data=st.data())
def test_features_property_any_non_finite_value_is_named(tmp_path_factory, data):
    from libs.datasets.ego4d import Ego4dDataset

    length = data.draw(st.integers(1, 6), label="T")
    array = np.zeros((length, 3), np.float32)
    row, col = data.draw(st.integers(0, length - 1)), data.draw(st.integers(0, 2))
    array[row, col] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    path = str(tmp_path_factory.mktemp("f") / "v.h5")
    write_store(path, [("clip", array)], kind="hdf5")
    dataset = Ego4dDataset.__new__(Ego4dDataset)  # only _load: no annotation files needed
    with pytest.raises(DataError, match=rf"^video features of id 'clip' in {path} contain NaN or Inf$"):
        dataset._load(open_store(path), "clip", 3, "video")


def test_wrong_feature_dimension(tiny):
    dataset = dataset_item(tiny, input_txt_dim=12)
    query_id = dataset.records[0]["query_id"]
    with pytest.raises(DataError) as err:
        dataset[0]
    assert str(err.value) == (f"text features of id {query_id!r} in {dataset.text_store.path} have dimension 8; "
                              "expected 12 (dataset.input_txt_dim)")


@pytest.mark.parametrize("what", ["video", "text"])
def test_empty_feature_array(tiny, tmp_path, what):
    store = tmp_path / f"{what}.h5"
    key = poisoned_store(tiny, store, what, lambda array: array[:0])
    dataset = dataset_item(tiny, **{("video_feat_dir" if what == "video" else "val_text_feat_dir"): str(store)})
    index = next(i for i, r in enumerate(dataset.records) if key in (r["video_id"], r["query_id"]))
    width = 16 if what == "video" else 8
    with pytest.raises(DataError) as err:
        dataset[index]
    assert str(err.value) == (f"{what} features of id {key!r} in {store} are empty (shape (0, {width})); "
                              "expected at least one time step")


def test_clip_missing_from_store_through_eval(tiny, tmp_path, capsys):
    source = open_store(str(tiny["data"] / "video_features.h5"))
    missing = read_jsonl(tiny["cfg"]["dataset"]["val_jsonl_file"], require_timestamps=True)[0]["video_id"]
    store = tmp_path / "few.h5"
    write_store(str(store), [(k, source[k]) for k in sorted(source.keys()) if k != missing], kind="hdf5")
    out = tmp_path / "out"
    message = user_error(eval_cli.main, eval_argv(tiny, out, "--opt", f"dataset.video_feat_dir={store}"), capsys)
    assert message.startswith(f"error: id {missing!r} not found in hdf5 feature store {store}; ")
    assert not out.exists()


def damage(path, how):
    """Make a store file unreadable: replace it by garbage, or keep only its first half."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"garbage!" * 64 if how == "garbage" else data[: len(data) // 2])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_hdf5_through_eval(tiny, tmp_path, capsys, how):
    store = tmp_path / "video.h5"
    store.write_bytes((tiny["data"] / "video_features.h5").read_bytes())
    damage(store, how)
    out = tmp_path / "out"
    message = user_error(eval_cli.main, eval_argv(tiny, out, "--opt", f"dataset.video_feat_dir={store}"), capsys)
    assert message.startswith(f"error: cannot read hdf5 feature store {store} (damaged or truncated?): OSError: ")
    assert not out.exists()


def test_corrupt_lmdb(tmp_path):
    import lmdb

    garbage = tmp_path / "garbage.lmdb"
    garbage.mkdir()
    (garbage / "data.mdb").write_bytes(b"x" * 8192)
    with pytest.raises(DataError, match=rf"^cannot read lmdb feature store {garbage} \(damaged or truncated\?\): "
                                        r"InvalidError: .*MDB_INVALID"):
        open_store(str(garbage))["c1"]
    # a readable database whose value is not the reference's compressed npz
    bad_value = tmp_path / "value.lmdb"
    env = lmdb.open(str(bad_value), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"c1", b"not an npz")
    env.close()
    with pytest.raises(DataError, match=rf"^cannot read id 'c1' of lmdb feature store {bad_value} "
                                        r"\(damaged or truncated\?\): ValueError: "):
        open_store(str(bad_value))["c1"]


@pytest.mark.parametrize("name", ["c1.npy", "c1.pt"])
def test_corrupt_folder_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"garbage!" * 8)
    with pytest.raises(DataError, match=rf"^cannot read id 'c1' of folder feature store {tmp_path} "
                                        r"\(damaged or truncated\?\): (ValueError|UnpicklingError): "):
        open_store(str(tmp_path))["c1"]


# ================================================================ checkpoints
@pytest.mark.parametrize("how, expected", [
    ("empty", "is empty (0 bytes); expected a torch checkpoint"),
    ("truncated", "cannot be read (truncated or not a torch checkpoint?): "),
    ("garbage", "cannot be read (truncated or not a torch checkpoint?): UnpicklingError: "),
])
def test_unreadable_checkpoint_through_eval(tiny, tmp_path, capsys, how, expected):
    path = tmp_path / "ckpt" / "epoch_000.pth.tar"
    path.parent.mkdir()
    data = open(tiny["checkpoint"], "rb").read()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"garbage!" * 64}[how])
    message = user_error(eval_cli.main, eval_argv(tiny, tmp_path / "out", checkpoint=str(path)), capsys)
    assert message.startswith(f"error: checkpoint {str(path)!r} {expected}")
    assert listing(tmp_path) == ["ckpt", "ckpt/epoch_000.pth.tar"]  # no --out folder, no predictions


def test_missing_checkpoint_through_eval(tiny, tmp_path, capsys):
    message = user_error(eval_cli.main, eval_argv(tiny, tmp_path / "out", checkpoint=str(tmp_path / "no.pth")),
                         capsys)
    assert message == f"error: checkpoint not found: {tmp_path / 'no.pth'}"
    assert listing(tmp_path) == []


def test_checkpoint_of_another_architecture_through_eval(tiny, tmp_path, capsys):
    model_cfg = dict(tiny["cfg"]["model"], backbone_arch=[1, 1, 1, 1, 1])  # GroundNLQ*: a cross branch
    path = tmp_path / "star.pth.tar"
    torch.save({"epoch": 0, "state_dict": make_meta_arch("LocPointTransformer", **model_cfg).state_dict()}, path)
    message = user_error(eval_cli.main, eval_argv(tiny, tmp_path / "out", checkpoint=str(path)), capsys)
    assert message.startswith(f"error: {path} does not fit the model (LocPointTransformer): ")
    assert "missing keys backbone.branch.0." in message or "unexpected keys backbone.branch.0." in message
    assert listing(tmp_path) == ["star.pth.tar"]


class ReferenceStyleScheduler(torch.optim.lr_scheduler.LRScheduler):
    """The reference's warm-up + cosine scheduler's *state* (its own attributes plus the base class's)."""

    def __init__(self, optimizer, warmup_epochs, max_epochs, warmup_start_lr=0.0, eta_min=1e-8):
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        self.warmup_start_lr, self.eta_min = warmup_start_lr, eta_min
        super().__init__(optimizer)

    def get_lr(self):
        return list(self.base_lrs)


def reference_layout(model, **scheduler_extra):
    """``{epoch, state_dict, scheduler, optimizer, state_dict_ema}`` as the reference's train.py saves it."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = ReferenceStyleScheduler(optimizer, warmup_epochs=4, max_epochs=14)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # optimizer state: exp_avg, exp_avg_sq, step tensors
    scheduler.step()
    state = scheduler.state_dict()
    state.update(scheduler_extra)
    return {"epoch": 5, "state_dict": model.state_dict(), "scheduler": state,
            "optimizer": optimizer.state_dict(), "state_dict_ema": model.state_dict()}


def test_reference_checkpoint_with_optimizer_and_scheduler_loads_weights_only(tiny, tmp_path):
    source = make_meta_arch(tiny["cfg"]["model_name"], **tiny["cfg"]["model"])
    path = tmp_path / "epoch_005.pth.tar"
    # a NumPy scalar (an lr computed with NumPy) needs the allow-list; plain weights_only refuses it
    torch.save(reference_layout(source, eta_min=np.float64(1e-8)), path)
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, map_location="cpu", weights_only=True)
    loaded = read_checkpoint(str(path))
    assert loaded["scheduler"]["warmup_epochs"] == 4 and loaded["scheduler"]["last_epoch"] == 1
    assert loaded["scheduler"]["eta_min"] == 1e-8 and set(loaded["optimizer"]) == {"state", "param_groups"}
    target = make_meta_arch(tiny["cfg"]["model_name"], **tiny["cfg"]["model"])
    assert load_checkpoint(target, str(path))["epoch"] == 5
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))


class RunsCode:
    """Unpickling this would run a shell command: a weights-only load must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_arbitrary_objects_is_refused_unless_trusted(tiny, tmp_path, capsys):
    source = make_meta_arch(tiny["cfg"]["model_name"], **tiny["cfg"]["model"])
    marker = tmp_path / "code_ran"
    path = tmp_path / "ckpt" / "evil.pth.tar"
    path.parent.mkdir()
    torch.save({**reference_layout(source), "args": RunsCode(marker)}, path)
    message = user_error(eval_cli.main, eval_argv(tiny, tmp_path / "out", checkpoint=str(path)), capsys)
    assert message == (f"error: checkpoint {str(path)!r} holds a posix.system object, which a weights-only "
                       "load refuses; if you made the file yourself, pass --trust-checkpoint (trust=True) "
                       "to unpickle it")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trusted_checkpoint_with_namespace_through_eval(tiny, tmp_path, capsys):
    import argparse

    path = tmp_path / "epoch_001.pth.tar"
    state = torch.load(tiny["checkpoint"], weights_only=True)
    torch.save({**state, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="holds a argparse.Namespace object"):
        read_checkpoint(str(path))
    out = tmp_path / "out"
    assert eval_cli.main(eval_argv(tiny, out, "--trust-checkpoint", checkpoint=str(path))) == 0
    assert listing(out) == ["val_epoch_001_metrics.json", "val_epoch_001_predictions.json",
                            "val_epoch_001_submission.json"]


def test_truncated_snapshot_through_train_resume(tiny, tmp_path, capsys, quiet_train_logs):
    snapshot = tmp_path / "snapshot_last.pth"
    torch_save({"format": "groundnlq-snapshot", "model": torch.load(tiny["checkpoint"], weights_only=True)}, str(snapshot))
    snapshot.write_bytes(snapshot.read_bytes()[:1000])
    message = user_error(train_cli.main, [tiny["config"], "--output", "r", "--resume", str(snapshot), "--opt",
                                          f"output_folder={tmp_path}/runs"], capsys)
    assert message.startswith(f"error: checkpoint {str(snapshot)!r} cannot be read (truncated or not a torch "
                              "checkpoint?): ")
    assert not (tmp_path / "runs").exists()  # read before the run folder is made


# ================================================================ config
@pytest.mark.parametrize("override, expected", [
    ("opt.learning_rat=1e-3", "unknown key 'opt.learning_rat' in section 'opt'; did you mean 'opt.learning_rate'?"),
    ("opt.epochs=three", "'opt.epochs' must be"),
    ("trainer.cpu_threads=0", "'trainer.cpu_threads' must be a positive integer or null, got 0"),
])
def test_config_typo_and_wrong_type_through_train(tiny, tmp_path, capsys, quiet_train_logs, override, expected):
    message = user_error(train_cli.main, [tiny["config"], "--output", "x", "--opt", override,
                                          f"output_folder={tmp_path}"], capsys)
    assert message.startswith(f"error: {tiny['config']}") or message.startswith("error: override")
    assert expected in message
    assert listing(tmp_path) == []  # the run folder is made only after the config loads


def test_config_not_valid_yaml_is_one_line(tmp_path, capsys):
    path = write_text(tmp_path / "bad.yaml", "opt:\n  epochs: [1,\n")
    message = user_error(train_cli.main, [path, "--output", "x"], capsys)
    assert message.startswith(f"error: config file {path} is not valid YAML: ")


def test_config_is_never_evaluated_as_code(tmp_path):
    marker = tmp_path / "code_ran"
    path = write_text(tmp_path / "evil.yaml", f'opt: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=rf"^config file {path} is not valid YAML: "):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^override \"opt.epochs=!!python/object/apply:os.system"):
        load_config(write_text(tmp_path / "ok.yaml", ""), [f"opt.epochs=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


# ================================================================ prediction files and submissions
@pytest.fixture
def split(tmp_path):
    return write_text(tmp_path / "nlq_val.json", json.dumps(official()))


def test_prediction_file_unknown_id_through_eval(split, tmp_path, capsys):
    pred = write_text(tmp_path / "pred.json", json.dumps(submission([
        {"clip_uid": "c1", "annotation_uid": "zz", "query_idx": 0, "predicted_times": [[1.0, 2.0]]}])))
    metrics = tmp_path / "metrics.json"
    message = user_error(eval_cli.main, ["--pred-file", pred, "--gt-file", split, "--json-out", str(metrics)], capsys)
    assert message == f"error: {pred} results[0]: unknown annotation_uid 'zz' for clip 'c1' (not in {split})"
    assert listing(tmp_path) == ["nlq_val.json", "pred.json"]


def test_prediction_window_ending_before_start_through_ensemble(split, tmp_path, capsys):
    pred = write_text(tmp_path / "pred.json", json.dumps(submission([
        {"clip_uid": "c1", "annotation_uid": "a1", "query_idx": 0, "predicted_times": [[5.0, 2.0, 0.9]]}])))
    out = tmp_path / "sub.json"
    message = user_error(ensemble_cli.main, [pred, pred, "--out", str(out), "--gt", split], capsys)
    assert message == (f"error: {pred} results[0] (query a1_0): predicted_times[0] ends before it starts: "
                       "[5.0, 2.0, 0.9]")
    assert listing(tmp_path) == ["nlq_val.json", "pred.json"]


def test_submission_missing_queries_through_ensemble(split, tmp_path, capsys):
    rows = [[10.0, 20.0, 0.9], [11.0, 21.0, 0.5], [30, 40, 0.4], [50, 60, 0.3], [70, 80, 0.2]]
    pred = write_text(tmp_path / "pred.json", json.dumps(submission([
        {"clip_uid": "c1", "annotation_uid": "a1", "query_idx": 0, "predicted_times": rows}])))
    out = tmp_path / "sub.json"
    message = user_error(ensemble_cli.main, [pred, "--out", str(out), "--gt", split], capsys)
    assert message == (f"error: submission vs {split}: 1 problem(s): 1 of 2 queries missing, "
                       "e.g. a1_1 (clip c1)")
    assert listing(tmp_path) == ["nlq_val.json", "pred.json"]


def test_submission_fewer_than_five_windows(split):
    sub = submission([{"clip_uid": "c1", "annotation_uid": "a1", "query_idx": i,
                       "predicted_times": [[10.0, 20.0]] * (5 if i else 3)} for i in range(2)])
    with pytest.raises(DataError) as err:
        validate_submission(sub, split)
    assert str(err.value) == f"submission vs {split}: 1 problem(s): query a1_0 (clip c1) has 3 windows, expected 5"


# ================================================================ training guards
def test_non_finite_loss_skips_the_step_naming_query_ids(caplog):
    items = toy_items(4)
    trainer = build_trainer(ToyModel(nan_ids={"q1"}), toy_loader(items, 2, shuffle=False))
    standard_hooks(trainer)
    with caplog.at_level(logging.WARNING, logger="groundnlq"):
        trainer.train(0, 1)
    warnings = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    assert len(warnings) == 1 and "q0" in warnings[0] and "q1" in warnings[0]
    assert trainer.nonfinite_in_a_row == 0 and trainer.iter == 2  # the next finite step reset the count


def test_non_finite_losses_in_a_row_save_a_snapshot_and_stop(tmp_path, capsys):
    items = toy_items(8)
    trainer = build_trainer(ToyModel(nan_ids={it["query_id"] for it in items}), toy_loader(items, 2),
                            max_nonfinite=3)
    standard_hooks(trainer)
    trainer.register_hooks([H.SnapshotHook(Checkpointer(str(tmp_path)), period=0)])
    assert run_command(lambda: trainer.train(0, 2)) == 2
    message = capsys.readouterr().err.strip()
    assert message == ("error: training stopped at epoch 0 step 2: 3 non-finite steps in a row "
                       "(trainer.max_nonfinite_steps = 3); the last snapshot holds the weights before them; "
                       "lower opt.learning_rate or check the data of the queries named above, then resume")
    assert listing(tmp_path) == ["snapshot_last.pth"]
    with pytest.raises(NonFiniteLossError):  # the library raises; only commands print
        trainer.train(0, 2)


# ================================================================ safe writes
def test_failed_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "val_submission.json"
    save_json({"ok": 1}, str(path))
    with pytest.raises(TypeError):
        save_json({"ok": 2, "bad": object()}, str(path))  # fails half-way through the dump
    assert json.loads(path.read_text()) == {"ok": 1} and listing(tmp_path) == ["val_submission.json"]


def test_failed_checkpoint_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "epoch_000.pth.tar"
    torch_save({"w": torch.ones(3)}, str(path))
    with pytest.raises(Exception):
        torch_save({"w": torch.zeros(3), "bad": lambda: None}, str(path))  # lambdas cannot be pickled
    assert torch.equal(read_checkpoint(str(path))["w"], torch.ones(3)) and listing(tmp_path) == ["epoch_000.pth.tar"]


def test_interrupted_conversion_resumes(tmp_path, capsys):
    import lmdb

    from libs.datasets.feature_store import _npz_bytes

    src = tmp_path / "src.lmdb"
    env = lmdb.open(str(src), map_size=1 << 22)
    arrays = {f"c{i}": np.full((3, 2), i, np.float32) for i in range(4)}
    with env.begin(write=True) as txn:
        for key, array in arrays.items():
            txn.put(key.encode(), b"damaged" if key == "c2" else _npz_bytes(array, "features"))
    env.close()
    dst = tmp_path / "dst.h5"
    argv = ["--src", str(src), "--dst", str(dst), "--no-progress"]
    message = user_error(convert_features.main, argv, capsys)
    assert message.startswith(f"error: cannot read id 'c2' of lmdb feature store {src} (damaged or truncated?)")
    # no finished-looking store: only the resumable partial one, holding the ids done so far
    assert not dst.exists() and "dst.h5.partial" in os.listdir(tmp_path)
    with h5py.File(tmp_path / "dst.h5.partial", "r") as f:
        assert sorted(f.keys()) == ["c0", "c1"]
    env = lmdb.open(str(src), map_size=1 << 22)
    with env.begin(write=True) as txn:  # the user repairs the source and runs the same command again
        txn.put(b"c2", _npz_bytes(arrays["c2"], "features"))
    env.close()
    assert convert_features.main(argv) == 0
    assert "copied 2, skipped 2 already present" in capsys.readouterr().out
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("dst")) == ["dst.h5"]
    store = open_store(str(dst))
    for key, array in arrays.items():
        np.testing.assert_array_equal(store[key], array)


# ================================================================ command-line behaviour
def test_commands_print_one_line_and_debug_shows_the_traceback(tmp_path):
    src = tmp_path / "official"
    src.mkdir()
    write_text(src / "nlq_val.json", "{")
    cmd = [sys.executable, os.path.join(ROOT, "ego4d_data", "reformat_data.py"), "--input_file_dir", str(src),
           "--output_dir", str(tmp_path / "out")]
    plain = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [f"error: {src / 'nlq_val.json'}: not valid JSON "
                                                 "(line 1: Expecting property name enclosed in double quotes)"]
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, cwd=ROOT)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr
    assert not (tmp_path / "out").exists()


def test_error_in_a_loader_worker_is_still_one_line(tiny, tmp_path, capsys):
    store = tmp_path / "video.h5"
    key = poisoned_store(tiny, store, "video", lambda a: a * np.nan)
    message = user_error(eval_cli.main, eval_argv(tiny, tmp_path / "out", "--opt", f"dataset.video_feat_dir={store}",
                                                  "loader.num_workers=1"), capsys)
    assert message == f"error: video features of id {key!r} in {store} contain NaN or Inf"
