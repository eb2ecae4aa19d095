"""Video-centric collate and the padding rules."""
import numpy as np
import pytest
import torch

from libs.core.errors import ConfigError, DataError
from libs.datasets.collate import Batch, collate, text_padded_length, video_padded_length


def item(video_id, num_feats, num_tokens, query_id, feats=None, with_gt=True):
    return {
        "video_id": video_id,
        "feats": feats if feats is not None else torch.full((3, num_feats), float(num_feats)),
        "fps": 30,
        "duration": num_feats * 16.043 / 30,
        "feat_stride": 16.043,
        "feat_num_frames": 16.043,
        "segments": torch.tensor([[1.0, 4.0]], dtype=torch.float64) if with_gt else None,
        "one_hot_labels": torch.ones(1, 1, dtype=torch.int64) if with_gt else None,
        "query_id": query_id,
        "query": "what?",
        "query_feats": torch.arange(2 * num_tokens, dtype=torch.float32).view(2, num_tokens) + 1,
    }


KW = dict(max_seq_len=64, pad_multiple=8)


def test_padding_rules():
    # exact: roundup(L + s, s), capped at max_seq_len; reference: max_seq_len
    assert [video_padded_length(n, 64, 8, "exact") for n in (1, 8, 9, 55, 56, 57, 64)] == [16, 16, 24, 64, 64, 64, 64]
    assert video_padded_length(10, 64, 8, "reference") == 64
    assert video_padded_length(70, 64, 8, "reference") == 80  # eval only: beyond max_seq_len
    with pytest.raises(DataError, match="clip-x"):
        video_padded_length(70, 64, 8, "exact", is_training=True, item_id="clip-x")
    assert text_padded_length([3, 7, 5], "at_least_one") == 8
    assert text_padded_length([3, 7, 5], "reference") == 7


def test_queries_of_one_clip_share_a_row():
    shared = torch.randn(3, 20)
    items = [item("a", 20, 4, "q0", feats=shared), item("b", 10, 2, "q1"), item("a", 20, 6, "q2", feats=shared.clone())]
    batch = collate(items, is_training=True, **KW)
    assert isinstance(batch, Batch)
    assert batch.num_videos == 2 and batch.num_queries == 3
    assert batch.video_index.tolist() == [0, 1, 0] and batch.video_index.dtype == torch.int64
    assert batch.videos.shape == (2, 3, 32)  # max(roundup(28, 8), roundup(18, 8))
    assert torch.equal(batch.videos[0, :, :20], shared) and torch.count_nonzero(batch.videos[0, :, 20:]) == 0
    assert batch.video_masks.dtype == torch.bool
    assert batch.video_masks.sum(-1).flatten().tolist() == [20, 10]
    assert batch.texts.shape == (3, 2, 7) and batch.text_masks.sum(-1).flatten().tolist() == [4, 2, 6]
    assert torch.count_nonzero(batch.texts[0, :, 4:]) == 0
    assert [m["query_id"] for m in batch.meta] == ["q0", "q1", "q2"]
    assert set(batch.meta[0]) == {"video_id", "query_id", "duration", "fps", "feat_stride", "feat_num_frames"}
    assert batch.segments[0].dtype == torch.float64 and batch.labels[0].dtype == torch.int64


def test_same_clip_with_different_features_gets_its_own_row():
    items = [item("a", 20, 4, "q0"), item("a", 20, 4, "q1", feats=torch.zeros(3, 20))]
    batch = collate(items, **KW)
    assert batch.num_videos == 2 and batch.video_index.tolist() == [0, 1]


def test_reference_modes_pad_to_max_seq_len_and_longest_query():
    batch = collate([item("a", 20, 4, "q0"), item("b", 9, 6, "q1")], video_pad_mode="reference",
                    text_pad_mode="reference", **KW)
    assert batch.videos.shape[-1] == 64 and batch.texts.shape[-1] == 6
    assert batch.text_masks[1].all()


def test_eval_allows_long_clips_and_missing_ground_truth_training_does_not():
    batch = collate([item("a", 70, 4, "q0", with_gt=False)], is_training=False, **KW)
    assert batch.videos.shape[-1] == 80 and batch.segments is None and batch.labels is None
    with pytest.raises(DataError, match="q0"):
        collate([item("a", 70, 4, "q0")], is_training=True, **KW)
    with pytest.raises(DataError, match="q1"):
        collate([item("a", 10, 4, "q0"), item("b", 10, 4, "q1", with_gt=False)], is_training=True, **KW)


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ConfigError, match="video_pad_mode"):
        collate([item("a", 10, 4, "q0")], video_pad_mode="tight", **KW)
    with pytest.raises(ConfigError, match="text_pad_mode"):
        collate([item("a", 10, 4, "q0")], text_pad_mode="none", **KW)
    bad = item("a", 10, 4, "q7")
    bad["query_feats"] = torch.zeros(2, 0)
    with pytest.raises(DataError, match="q7.*query_feats"):
        collate([bad], **KW)
    other = item("b", 10, 4, "q8", feats=torch.zeros(5, 10))
    with pytest.raises(DataError, match="q8.*3"):
        collate([item("a", 10, 4, "q0"), other], **KW)


def test_numpy_inputs_and_device_move():
    raw = item("a", 12, 3, "q0")
    raw["feats"] = raw["feats"].numpy().astype(np.float64)
    raw["query_feats"] = raw["query_feats"].numpy()
    batch = collate([raw], **KW).to("cpu")
    assert batch.videos.dtype == torch.float32 and batch.videos.shape == (1, 3, 24)
    assert batch.query_ids == ["q0"]
