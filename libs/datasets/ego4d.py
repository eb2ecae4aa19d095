"""The ``"ego4d"`` dataset: one item per (clip, query) pair, in the reference's item layout.

Differences from the reference (spec 4, 12), none of which changes an item's numbers:

* bad input raises ``DataError`` / ``ConfigError`` naming the id or key (the reference printed and
  exited, or only printed for over-long clips);
* only the files the split uses must exist (the reference also required the training jsonl and
  text store in evaluation);
* the dataset does not shuffle its records (the reference shuffled the training list once with
  Python ``random``); the sampler shuffles;
* training clips longer than ``max_seq_len`` follow ``long_clip_policy`` (the reference asserted
  later, in the model): ``"crop"`` keeps a ``max_seq_len`` window that contains the ground truth,
  ``"error"`` raises. Evaluation items are always whole; the model pads past ``max_seq_len``.
* ``trunc_thresh`` and ``crop_ratio`` (in two shipped configs, but not parameters of the
  reference's class) are accepted and ignored.
"""
from __future__ import annotations

import math
import os
import random
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from libs.core.errors import ConfigError, DataError

from .annotations import read_jsonl
from .registry import DATASETS
from .feature_store import FeatureStore, open_store

LONG_CLIP_POLICIES = ("crop", "error")
# jitter (spec 4): a window becomes r times longer, r uniform in [1, JITTER_MAX_RATIO]
JITTER_MAX_RATIO = 10


def jitter_window(start: float, end: float, rng: random.Random) -> List[float]:
    """The reference's GT jitter: ``r`` times longer (``r`` in 1..10), still containing ``[start, end]``.

    ``c' = c - u (r - 1) d / 2`` with ``u`` uniform in [-1, 1] moves the centre by at most
    ``(r - 1) d / 2``, so the new window ``[c' - r d / 2, c' + r d / 2]`` covers the original.
    Not clamped to the clip.
    """
    duration = end - start
    centre = (start + end) / 2
    ratio = rng.randint(1, JITTER_MAX_RATIO)
    shift = rng.uniform(-1, 1)
    centre = centre - shift * (ratio - 1) * duration / 2
    return [centre - ratio * duration / 2, centre + ratio * duration / 2]


def seconds_to_grid(timestamps: Sequence[Sequence[float]], fps: float, feat_stride: float,
                    downsample_rate: int) -> torch.Tensor:
    """Windows in seconds -> ``(N, 2)`` float64 grid units, ``t = s * fps / (stride * rate)``, no offset."""
    seconds = np.asarray(timestamps, dtype=np.float64)  # (N, 2)
    return torch.from_numpy(seconds * fps / (feat_stride * downsample_rate))


def crop_window_start(num_feats: int, max_seq_len: int, segments: torch.Tensor, rng: random.Random) -> int:
    """First feature of a ``max_seq_len`` window of a longer clip that contains every GT window.

    The start is drawn uniformly among the integer starts whose window covers
    ``[min start, max end]`` of the (grid) segments. When no start can (the ground truth is
    longer than ``max_seq_len`` or runs past the clip), the window starts at the GT start,
    clamped to the clip.
    """
    gt_start = float(segments[:, 0].min())
    gt_end = float(segments[:, 1].max())
    last_start = num_feats - max_seq_len
    lowest = max(0, math.ceil(gt_end) - max_seq_len)
    highest = min(last_start, math.floor(gt_start))
    if lowest <= highest:
        return rng.randint(lowest, highest)
    return min(max(math.floor(gt_start), 0), last_start)


@DATASETS.register("ego4d")
class Ego4dDataset(Dataset):
    """Ego4D NLQ (or narration) queries with their clip's video features and token features.

    Training reads ``train_jsonl_file`` + ``text_feat_dir``; evaluation reads ``val_jsonl_file`` +
    ``val_text_feat_dir`` (falling back to ``text_feat_dir``). ``video_feat_dir`` is one store for
    both. Stores may be HDF5, LMDB or folders (``open_store``). Item (reference layout)::

        video_id, feats (C_v, T) float32, fps, duration, feat_stride, feat_num_frames,
        segments (N, 2) float64 grid units | None, one_hot_labels (N, num_classes) int64 | None,
        query_id, query, query_feats (C_t, L) float32
    """

    def __init__(self, is_training: bool, split: Sequence[str], video_feat_dir: str,
                 val_jsonl_file: Optional[str] = None, text_feat_dir: Optional[str] = None,
                 val_text_feat_dir: Optional[str] = None, json_file: Optional[str] = None,
                 train_jsonl_file: Optional[str] = None, feat_stride: float = 16,
                 num_frames: float = 32, default_fps: Optional[float] = None, downsample_rate: int = 1,
                 max_seq_len: int = 2560, input_txt_dim: int = 512, input_vid_dim: int = 2304,
                 num_classes: int = 1, enable_temporal_jittering: bool = False,
                 feature_cache_mb: int = 0, long_clip_policy: str = "crop",
                 text_encoder: Optional[str] = None, video_backbone: Optional[str] = None,
                 test_jsonl_file: Optional[str] = None, trunc_thresh: Any = None, crop_ratio: Any = None) -> None:
        del trunc_thresh, crop_ratio  # accepted for the shipped configs; the reference ignores them too
        del text_encoder, video_backbone  # read by the predictor; the stored features are already made
        del test_jsonl_file  # eval.py --split test swaps it into val_jsonl_file
        if default_fps is None or default_fps <= 0:
            raise ConfigError(f"dataset.default_fps must be a positive frame rate, got {default_fps!r}")
        if long_clip_policy not in LONG_CLIP_POLICIES:
            raise ConfigError(f"dataset.long_clip_policy must be one of {list(LONG_CLIP_POLICIES)}, "
                              f"got {long_clip_policy!r}")
        if not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ConfigError(f"dataset.max_seq_len must be a positive integer, got {max_seq_len!r}")
        self.is_training = is_training
        self.split = split
        self.json_file = json_file  # official annotation file, for the evaluator
        self.feat_stride = feat_stride
        self.num_frames = num_frames
        self.default_fps = default_fps
        self.downsample_rate = downsample_rate
        self.max_seq_len = max_seq_len
        self.input_txt_dim = input_txt_dim
        self.input_vid_dim = input_vid_dim
        self.num_classes = num_classes
        self.enable_temporal_jittering = enable_temporal_jittering
        self.long_clip_policy = long_clip_policy
        self.rng = random  # module-level state, seeded per worker by worker_init_fn

        if is_training:
            jsonl_key, jsonl_file = "train_jsonl_file", train_jsonl_file
            text_key, text_dir = "text_feat_dir", text_feat_dir
        else:
            jsonl_key, jsonl_file = "val_jsonl_file", val_jsonl_file
            text_key, text_dir = "val_text_feat_dir", val_text_feat_dir or text_feat_dir
        for key, path in ((jsonl_key, jsonl_file), (text_key, text_dir), ("video_feat_dir", video_feat_dir)):
            if not path or not os.path.exists(path):
                raise DataError(f"dataset.{key}: {path!r} does not exist")
        self.jsonl_file = jsonl_file
        self.records: List[Dict[str, Any]] = read_jsonl(jsonl_file, require_timestamps=is_training)
        self.video_store: FeatureStore = open_store(video_feat_dir, cache_bytes=int(feature_cache_mb) << 20)
        self.text_store: FeatureStore = open_store(text_dir)

    def __len__(self) -> int:
        return len(self.records)

    def video_id_of(self, index: int) -> str:
        """The clip of item ``index``, without reading features (for the video-centric sampler)."""
        return self.records[index]["video_id"]

    def _load(self, store: FeatureStore, key: str, expected_dim: int, what: str) -> np.ndarray:
        """``(T, C)`` features of ``key`` after checking the length, the width and that every value
        is finite (an empty or poisoned array would otherwise fail deep inside the model)."""
        feats = store[key]
        if feats.shape[0] == 0:
            raise DataError(f"{what} features of id {key!r} in {store.path} are empty (shape "
                            f"{tuple(feats.shape)}); expected at least one time step")
        if feats.shape[1] != expected_dim:
            raise DataError(f"{what} features of id {key!r} in {store.path} have dimension "
                            f"{feats.shape[1]}; expected {expected_dim} (dataset.input_"
                            f"{'vid' if what == 'video' else 'txt'}_dim)")
        if not np.isfinite(feats).all():
            raise DataError(f"{what} features of id {key!r} in {store.path} contain NaN or Inf")
        return feats

    def _fit_long_clip(self, feats: torch.Tensor, segments: Optional[torch.Tensor], query_id: str,
                       video_id: str):
        """Training only: apply ``long_clip_policy`` to a clip longer than ``max_seq_len``."""
        num_feats = feats.shape[1]
        if num_feats <= self.max_seq_len:
            return feats, segments
        if self.long_clip_policy == "error":
            raise DataError(f"query {query_id!r} (clip {video_id!r}): {num_feats} features exceed "
                            f"dataset.max_seq_len={self.max_seq_len}; raise max_seq_len or set "
                            f"dataset.long_clip_policy to 'crop'")
        start = crop_window_start(num_feats, self.max_seq_len, segments, self.rng)
        feats = feats[:, start:start + self.max_seq_len].contiguous()  # (C_v, max_seq_len)
        return feats, segments - start

    def __getitem__(self, index: int) -> Dict[str, Any]:
        record = self.records[index]
        video_id, query_id = record["video_id"], record["query_id"]
        video = self._load(self.video_store, video_id, self.input_vid_dim, "video")
        feats = torch.from_numpy(np.ascontiguousarray(video.T))  # (C_v, T) float32, a copy
        text = self._load(self.text_store, query_id, self.input_txt_dim, "text")
        query_feats = torch.from_numpy(np.ascontiguousarray(text.T))  # (C_t, L) float32

        segments = labels = None
        if "timestamps" in record:
            windows = record["timestamps"]
            if self.is_training and self.enable_temporal_jittering:
                windows = [jitter_window(s, e, self.rng) for s, e in windows]
            segments = seconds_to_grid(windows, self.default_fps, self.feat_stride,
                                       self.downsample_rate)  # (N, 2) float64
            labels = torch.zeros(len(windows), self.num_classes, dtype=torch.int64)  # (N, classes)
            labels[:, 0] = 1  # every query is class 0 (the reference's [[1]] for one class)
        if self.is_training:
            if segments is None:
                raise DataError(f"{self.jsonl_file}: training query {query_id!r} has no timestamps")
            feats, segments = self._fit_long_clip(feats, segments, query_id, video_id)

        return {
            "video_id": video_id,
            "feats": feats,
            "fps": self.default_fps,
            "duration": record["duration"],
            "feat_stride": self.feat_stride,
            "feat_num_frames": self.num_frames,
            "segments": segments,
            "one_hot_labels": labels,
            "query_id": query_id,
            "query": record.get("narration_query", record["query"]),
            "query_feats": query_feats,
        }
