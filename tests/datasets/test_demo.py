"""The demo data generator: determinism, real formats, statistics, signal, every store kind."""
import json
import os

import numpy as np
import pytest
import torch

from libs.datasets.annotations import dumps_jsonl, official_to_records, read_jsonl
from libs.datasets.demo import (
    FEAT_STRIDE,
    FPS,
    JSONL_FILES,
    NOUN_AMPLITUDE,
    OBJECT_WORDS,
    OBJECTS,
    TEXT_STORE,
    VIDEO_STORE,
    WordSpace,
    make_demo_data,
    query_tokens,
)
from libs.datasets.datasets import make_dataset
from libs.datasets.feature_store import copy_store, open_store

SMALL = dict(num_train_clips=3, num_val_clips=2, num_test_clips=1, video_dim=16, text_dim=8)
OFFICIAL = {"train": "nlq_train.json", "val": "nlq_val.json", "test": "nlq_test_unannotated.json"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    meta = make_demo_data(out, seed=0)
    return out, meta


def test_same_seed_same_files(tmp_path):
    make_demo_data(str(tmp_path / "a"), seed=3, **SMALL)
    make_demo_data(str(tmp_path / "b"), seed=3, **SMALL)
    make_demo_data(str(tmp_path / "c"), seed=4, **SMALL)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(list(OFFICIAL.values()) + list(JSONL_FILES.values())
                           + [VIDEO_STORE, TEXT_STORE, "demo_meta.json"])
    for name in names:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
        if name != "demo_meta.json":
            assert a != (tmp_path / "c" / name).read_bytes(), name


def test_jsonl_is_the_conversion_of_the_official_json(demo):
    out, _ = demo
    for split, name in OFFICIAL.items():
        with open(os.path.join(out, name)) as f:
            data = json.load(f)
        records, summary = official_to_records(data, split)
        with open(os.path.join(out, JSONL_FILES[split]), newline="") as f:
            assert f.read() == dumps_jsonl(records)
        assert summary["skipped"] == {}
        queries = [q for v in data["videos"] for c in v["clips"] for a in c["annotations"]
                   for q in a["language_queries"]]
        if split == "test":
            assert all(set(q) == {"query"} for q in queries)
            assert all("timestamps" not in r for r in records)
        else:
            assert all({"clip_start_sec", "clip_end_sec", "template", "query", "slot_x", "verb_x"} <= set(q)
                       for q in queries)
            assert all(r["timestamps"][0][0] >= 0 and r["timestamps"][0][1] <= r["duration"] for r in records)


def test_statistics_near_real_targets(demo):
    _, meta = demo
    stats = meta["statistics"]
    assert stats["clips"] == 192 + 12 + 12
    assert stats["median_clip_sec"] == 480.0
    assert 0.6 <= stats["fraction_clips_480s"] <= 0.95
    assert stats["max_features"] == 898  # 480 s at 30 / 16.043 features per second
    assert 2.5 <= stats["median_window_sec"] <= 6.0
    assert 10.0 <= stats["p90_window_sec"] <= 35.0
    assert 8.5 <= stats["mean_queries_per_clip"] <= 13.5


def test_feature_stores_match_annotations(demo):
    out, meta = demo
    video = open_store(os.path.join(out, VIDEO_STORE))
    text = open_store(os.path.join(out, TEXT_STORE))
    words = WordSpace(0, meta["text_dim"], meta["video_dim"])
    for split in OFFICIAL:
        for record in read_jsonl(os.path.join(out, JSONL_FILES[split]), require_timestamps=False):
            feats = video[record["video_id"]]
            assert feats.shape == (int(round(record["duration"] * FPS / FEAT_STRIDE)), meta["video_dim"])
            tokens = text[record["query_id"]]
            expected = np.stack([words.token(t) for t in query_tokens(record["query"])])
            assert tokens.shape == expected.shape
            assert np.abs(tokens - expected).max() < 1.0  # token feature + small noise


def test_object_word_tokens_share_the_noun_direction(demo):
    """Object words' tokens carry NOUN_AMPLITUDE of the shared direction; other words none of it."""
    out, meta = demo
    words = WordSpace(0, meta["text_dim"], meta["video_dim"])
    text = open_store(os.path.join(out, TEXT_STORE))
    noun = words.noun_direction
    on_noun = {True: [], False: []}
    for record in read_jsonl(os.path.join(out, JSONL_FILES["val"]), require_timestamps=True):
        for token, feat in zip(query_tokens(record["query"]), text[record["query_id"]]):
            residual = feat - words.embedding(token)  # noun part + noise
            on_noun[token in OBJECT_WORDS].append(residual @ noun / (noun @ noun))
    assert np.allclose(on_noun[True], NOUN_AMPLITUDE, atol=0.1)
    assert np.allclose(on_noun[False], 0.0, atol=0.1)


def test_signal_marks_the_ground_truth_window(demo):
    """The named object's signature peaks inside the query's window: the task is learnable."""
    out, meta = demo
    words = WordSpace(0, meta["text_dim"], meta["video_dim"])
    video = open_store(os.path.join(out, VIDEO_STORE))
    with open(os.path.join(out, OFFICIAL["val"])) as f:
        data = json.load(f)
    hits = total = 0
    for v in data["videos"]:
        for clip in v["clips"]:
            feats = video[clip["clip_uid"]]
            for ann in clip["annotations"]:
                for q in ann["language_queries"]:
                    peak = int(np.argmax(feats @ words.signature(q["slot_x"]))) * FEAT_STRIDE / FPS
                    hits += q["clip_start_sec"] - 0.6 <= peak <= q["clip_end_sec"] + 0.6
                    total += 1
    assert total > 50 and hits / total >= 0.95


def test_some_object_is_in_view_everywhere(demo):
    """Between the windows, unqueried objects fill the time: "an object is here" gives no answer."""
    out, meta = demo
    words = WordSpace(0, meta["text_dim"], meta["video_dim"])
    signatures = np.stack([words.signature(o) for o in OBJECTS])  # (K, C_v), unit variance
    video = open_store(os.path.join(out, VIDEO_STORE))
    with open(os.path.join(out, OFFICIAL["val"])) as f:
        data = json.load(f)
    for v in data["videos"]:
        for clip in v["clips"]:
            feats = np.asarray(video[clip["clip_uid"]], dtype=np.float64)
            # an object's own signature projects to OBJECT_AMPLITUDE (0.8); others to about 0 +- 0.1
            best = (feats @ signatures.T / meta["video_dim"]).max(axis=1)
            assert (best > 0.4).mean() >= 0.95, clip["clip_uid"]


def _items(out, video_store, text_store):
    kwargs = dict(video_feat_dir=video_store, text_feat_dir=text_store, val_text_feat_dir=text_store,
                  val_jsonl_file=os.path.join(out, JSONL_FILES["val"]), feat_stride=FEAT_STRIDE,
                  num_frames=FEAT_STRIDE, default_fps=FPS, max_seq_len=1024, input_vid_dim=16,
                  input_txt_dim=8)
    dataset = make_dataset("ego4d", False, ["validation"], **kwargs)
    return [dataset[i] for i in range(len(dataset))]


def test_loads_identically_from_every_store_kind(tmp_path):
    out = str(tmp_path / "demo")
    make_demo_data(out, seed=1, **SMALL)
    video, text = os.path.join(out, VIDEO_STORE), os.path.join(out, TEXT_STORE)
    reference = _items(out, video, text)
    assert len(reference) > 0
    copy_store(video, str(tmp_path / "video_lmdb"), kind="lmdb", progress=False)
    copy_store(text, str(tmp_path / "text_lmdb"), kind="lmdb", field="token_features", progress=False)
    copy_store(video, str(tmp_path / "video_pt"), kind="folder", folder_format="pt", progress=False)
    copy_store(text, str(tmp_path / "text_npy"), kind="folder", progress=False)
    for video_store, text_store in ((tmp_path / "video_lmdb", tmp_path / "text_lmdb"),
                                    (tmp_path / "video_pt", tmp_path / "text_npy")):
        items = _items(out, str(video_store), str(text_store))
        for a, b in zip(reference, items):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], torch.Tensor):
                    assert torch.equal(a[key], b[key]), key
                else:
                    assert a[key] == b[key], key


def test_command_line_tool(tmp_path, capsys):
    from tools.make_demo_data import main

    assert main(["--out", str(tmp_path / "cli"), "--seed", "2", "--num-train-clips", "2", "--num-val-clips", "1",
                 "--num-test-clips", "1", "--video-dim", "16", "--text-dim", "8"]) == 0
    assert "mean_queries_per_clip" in capsys.readouterr().out
    assert open_store(str(tmp_path / "cli" / VIDEO_STORE))[read_jsonl(
        str(tmp_path / "cli" / JSONL_FILES["test"]), require_timestamps=False)[0]["video_id"]].shape[1] == 16
