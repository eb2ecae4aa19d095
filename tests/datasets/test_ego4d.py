"""The "ego4d" dataset: item layout, seconds -> grid, jitter, long-clip policies, input errors."""
import json
import random

import numpy as np
import pytest
import torch

from libs.core.errors import ConfigError, DataError
from libs.datasets.datasets import make_dataset
from libs.datasets.registry import DATASETS
from libs.datasets.ego4d import Ego4dDataset, crop_window_start, jitter_window
from libs.datasets.feature_store import write_store

C_V, C_T, T_CLIP = 6, 4, 40
STRIDE, FPS = 16.043, 30


def _write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records))
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    """Clip ``long`` (40 features), clip ``short`` (10); three queries; HDF5 stores."""
    video = {"long": np.arange(T_CLIP * C_V, dtype=np.float32).reshape(T_CLIP, C_V),
             "short": np.ones((10, C_V), np.float32)}
    text = {"q_0": np.full((3, C_T), 0.5, np.float32), "q_1": np.zeros((2, C_T), np.float32),
            "n_0": np.ones((5, C_T), np.float32)}
    write_store(str(tmp_path / "video.h5"), video.items(), kind="hdf5")
    write_store(str(tmp_path / "text.h5"), text.items(), kind="hdf5")
    records = [
        # 16.043 * 20 / 30 s is 20 grid units: t = s * fps / feat_stride
        {"query": "Where did I put the cup?", "query_id": "q_0", "duration": 21.4, "video_id": "long",
         "query_type": "nlq", "timestamps": [[STRIDE * 20 / FPS, STRIDE * 25 / FPS]]},
        {"query": "What did I pour?", "query_id": "q_1", "duration": 5.3, "video_id": "short",
         "query_type": "nlq", "timestamps": [[1.0, 2.0]]},
        {"narration_query": "#C C opens the door", "query_id": "n_0", "duration": 21.4,
         "video_id": "long", "query_type": "nlq_narration", "timestamps": [[0.0, STRIDE / FPS]]},
    ]
    jsonl = _write_jsonl(tmp_path / "train.jsonl", records)
    kwargs = dict(video_feat_dir=str(tmp_path / "video.h5"), text_feat_dir=str(tmp_path / "text.h5"),
                  val_text_feat_dir=str(tmp_path / "text.h5"), train_jsonl_file=jsonl,
                  val_jsonl_file=jsonl, json_file=None, feat_stride=STRIDE, num_frames=STRIDE,
                  default_fps=FPS, downsample_rate=1, max_seq_len=64, input_txt_dim=C_T,
                  input_vid_dim=C_V, num_classes=1, enable_temporal_jittering=False,
                  trunc_thresh=0.3, crop_ratio=[0.9, 1.0])
    return {"kwargs": kwargs, "video": video, "tmp": tmp_path, "records": records}


def test_item_layout_and_grid_numbers(tiny):
    dataset = make_dataset("ego4d", False, ["validation"], **tiny["kwargs"])
    assert len(dataset) == 3 and [dataset.video_id_of(i) for i in range(3)] == ["long", "short", "long"]
    item = dataset[0]
    assert set(item) == {"video_id", "feats", "fps", "duration", "feat_stride", "feat_num_frames",
                         "segments", "one_hot_labels", "query_id", "query", "query_feats"}
    assert item["feats"].dtype == torch.float32 and item["feats"].shape == (C_V, T_CLIP)
    torch.testing.assert_close(item["feats"], torch.from_numpy(tiny["video"]["long"].T.copy()))
    assert item["query_feats"].dtype == torch.float32 and item["query_feats"].shape == (C_T, 3)
    assert item["segments"].dtype == torch.float64 and item["segments"].shape == (1, 2)
    torch.testing.assert_close(item["segments"], torch.tensor([[20.0, 25.0]], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert item["one_hot_labels"].dtype == torch.int64 and item["one_hot_labels"].tolist() == [[1]]
    assert (item["fps"], item["feat_stride"], item["feat_num_frames"], item["duration"]) == (30, STRIDE, STRIDE, 21.4)
    assert item["query"] == "Where did I put the cup?"
    # 1 s and 2 s: 30 / 16.043 = 1.8699744436... grid units per second
    torch.testing.assert_close(dataset[1]["segments"], torch.tensor([[1.8699744437, 3.7399488874]],
                                                                    dtype=torch.float64), rtol=0, atol=1e-9)
    assert dataset[2]["query"] == "#C C opens the door"  # narration_query is the query


def test_downsample_rate_rescales_targets_only(tiny):
    kwargs = dict(tiny["kwargs"], downsample_rate=2)
    item = make_dataset("ego4d", False, ["validation"], **kwargs)[0]
    torch.testing.assert_close(item["segments"], torch.tensor([[10.0, 12.5]], dtype=torch.float64))
    assert item["feat_stride"] == STRIDE and item["feats"].shape[1] == T_CLIP


def test_test_split_has_no_ground_truth(tiny):
    records = [{k: v for k, v in r.items() if k != "timestamps"} for r in tiny["records"]]
    kwargs = dict(tiny["kwargs"], val_jsonl_file=_write_jsonl(tiny["tmp"] / "test.jsonl", records))
    item = Ego4dDataset(is_training=False, split=["test"], **kwargs)[0]
    assert item["segments"] is None and item["one_hot_labels"] is None


def test_narration_name_is_the_same_class(tiny):
    make_dataset("ego4d", True, ["training"], **tiny["kwargs"])  # registers the built-in names
    assert DATASETS.get("ego4d_narration") is Ego4dDataset
    with pytest.raises(ConfigError, match="epic"):
        make_dataset("epic", True, ["training"], **tiny["kwargs"])


def test_jitter_contains_original_window():
    rng = random.Random(0)
    ratios = set()
    for _ in range(300):
        start, end = jitter_window(10.0, 12.0, rng)
        assert start <= 10.0 + 1e-9 and end >= 12.0 - 1e-9
        ratio = (end - start) / 2.0
        assert abs(ratio - round(ratio)) < 1e-9 and 1 <= round(ratio) <= 10
        ratios.add(round(ratio))
    assert ratios == set(range(1, 11))


def test_dataset_jitters_only_in_training(tiny):
    kwargs = dict(tiny["kwargs"], enable_temporal_jittering=True)
    train = make_dataset("ego4d", True, ["training"], **kwargs)
    random.seed(1)
    lengths = set()
    for _ in range(30):
        start, end = train[0]["segments"][0].tolist()
        assert start <= 20.0 + 1e-9 and end >= 25.0 - 1e-9
        lengths.add(round(end - start, 6))
    assert len(lengths) > 1
    val = make_dataset("ego4d", False, ["validation"], **kwargs)
    torch.testing.assert_close(val[0]["segments"], torch.tensor([[20.0, 25.0]], dtype=torch.float64))


def test_crop_keeps_ground_truth_and_shifts_segments(tiny):
    kwargs = dict(tiny["kwargs"], max_seq_len=16, long_clip_policy="crop")
    train = make_dataset("ego4d", True, ["training"], **kwargs)
    full = torch.from_numpy(tiny["video"]["long"].T.copy())
    random.seed(0)
    starts = set()
    for _ in range(60):
        item = train[0]
        assert item["feats"].shape == (C_V, 16)
        start = int(round(20.0 - float(item["segments"][0, 0])))
        torch.testing.assert_close(item["segments"], torch.tensor([[20.0 - start, 25.0 - start]],
                                                                  dtype=torch.float64))
        torch.testing.assert_close(item["feats"], full[:, start:start + 16])
        assert 0 <= item["segments"][0, 0] and item["segments"][0, 1] <= 16
        starts.add(start)
    assert starts == set(range(9, 21))  # every start whose window covers [20, 25]
    assert train[1]["feats"].shape == (C_V, 10)  # short clips are untouched
    evaluation = make_dataset("ego4d", False, ["validation"], **kwargs)
    assert evaluation[0]["feats"].shape == (C_V, T_CLIP)  # evaluation items stay whole


def test_crop_when_ground_truth_cannot_fit():
    rng = random.Random(0)
    # GT [5, 30] is longer than 16: the window starts at the GT start
    assert crop_window_start(40, 16, torch.tensor([[5.0, 30.0]]), rng) == 5
    # GT past the clip end: the last window
    assert crop_window_start(40, 16, torch.tensor([[35.0, 45.0]]), rng) == 24


def test_error_policy_names_the_query(tiny):
    kwargs = dict(tiny["kwargs"], max_seq_len=16, long_clip_policy="error")
    train = make_dataset("ego4d", True, ["training"], **kwargs)
    with pytest.raises(DataError, match=r"query 'q_0' \(clip 'long'\): 40 features exceed dataset.max_seq_len=16"):
        train[0]
    assert train[1]["feats"].shape == (C_V, 10)
    with pytest.raises(ConfigError, match="long_clip_policy"):
        make_dataset("ego4d", True, ["training"], **dict(kwargs, long_clip_policy="pad"))


def test_bad_features_raise_data_errors(tiny):
    tmp = tiny["tmp"]
    with pytest.raises(DataError, match=r"id 'long' in .*video.h5 have dimension 6; expected 8"):
        make_dataset("ego4d", False, ["validation"], **dict(tiny["kwargs"], input_vid_dim=8))[0]
    bad = np.ones((T_CLIP, C_V), np.float32)
    bad[3, 2] = np.nan
    write_store(str(tmp / "nan.h5"), [("long", bad)], kind="hdf5")
    with pytest.raises(DataError, match="NaN or Inf"):
        make_dataset("ego4d", False, ["validation"], **dict(tiny["kwargs"], video_feat_dir=str(tmp / "nan.h5")))[0]
    write_store(str(tmp / "few.h5"), [("q_0", np.ones((2, C_T)))], kind="hdf5")
    kwargs = dict(tiny["kwargs"], val_text_feat_dir=str(tmp / "few.h5"))
    with pytest.raises(DataError, match=r"id 'q_1' not found in hdf5 feature store .*few.h5"):
        make_dataset("ego4d", False, ["validation"], **kwargs)[1]


def test_missing_files_and_settings(tiny):
    with pytest.raises(DataError, match="dataset.train_jsonl_file: '/nowhere.jsonl' does not exist"):
        make_dataset("ego4d", True, ["training"], **dict(tiny["kwargs"], train_jsonl_file="/nowhere.jsonl"))
    with pytest.raises(ConfigError, match="default_fps"):
        make_dataset("ego4d", True, ["training"], **dict(tiny["kwargs"], default_fps=None))
    records = [{k: v for k, v in r.items() if k != "timestamps"} for r in tiny["records"]]
    kwargs = dict(tiny["kwargs"], train_jsonl_file=_write_jsonl(tiny["tmp"] / "nogt.jsonl", records))
    with pytest.raises(DataError, match="timestamps"):
        make_dataset("ego4d", True, ["training"], **kwargs)


def test_feature_cache_serves_copies(tiny):
    dataset = make_dataset("ego4d", False, ["validation"], **dict(tiny["kwargs"], feature_cache_mb=1))
    first = dataset[0]["feats"]
    first.add_(1.0)  # items own their tensors: the cached array is untouched
    torch.testing.assert_close(dataset[2]["feats"], torch.from_numpy(tiny["video"]["long"].T.copy()))
    assert dataset.video_store._cache.used_bytes == T_CLIP * C_V * 4
