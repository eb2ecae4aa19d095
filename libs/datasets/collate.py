"""Batching: the ``Batch`` the model consumes and the padding rules that decide its lengths.

Queries of the same clip share one video row (``Batch.video_index`` maps each query to its row),
so a clip's features are copied and embedded once however many queries ask about it.

Padding rules (spec 5.4 / 5.6), one function each:

* video, ``"reference"``: every clip is padded to ``max_seq_len`` (the reference, train and eval);
* video, ``"exact"``: the shortest length that gives the reference's outputs at every valid
  position: ``T = min(max_seq_len, roundup(L + s, s))`` with ``s`` = the largest pyramid stride
  (``pad_multiple``). Why: the stride-s convolutions need ``T % s == 0``, and the last valid
  position of every level must see at least one padded column, exactly as at ``max_seq_len``
  (kernel-3 convolutions and the pooling skip read that column, and a padded column is not
  zero after LayerNorm). ``T >= L + s`` is the smallest multiple of ``s`` giving every level
  ``T / s_l > ceil(L / s_l)``. Clips longer than ``max_seq_len`` (eval only; training raises a
  ``DataError``) use the same rule beyond it; the backbone then resamples its position table.
  With ``model.trim_pyramid`` the model runs each pyramid level shorter still (its valid length
  plus one padded column, ``backbones.pyramid_lengths``); the batch keeps this length ``T``.
* text, ``"reference"``: the longest query of the batch (outputs depend on the batch);
* text, ``"at_least_one"``: one column more than the longest query, so every query is padded by
  at least one column and its outputs never depend on the batch (1 or 20 padded columns give
  the same result; 0 does not).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.errors import ConfigError, DataError

Tensor = torch.Tensor

VIDEO_PAD_MODES = ("exact", "reference")
TEXT_PAD_MODES = ("at_least_one", "reference")
META_KEYS = ("video_id", "query_id", "duration", "fps", "feat_stride", "feat_num_frames")


@dataclasses.dataclass
class Batch:
    """A padded batch: distinct clips once, queries with their text and ground truth.

    videos ``(V, C_v, T)`` float32 zero padded; video_masks ``(V, 1, T)`` bool; texts
    ``(Q, C_t, L)`` float32 zero padded; text_masks ``(Q, 1, L)`` bool; video_index ``(Q,)``
    int64 (row of ``videos`` per query); segments / labels: per query float64 ``(N_i, 2)`` grid
    units / int64 ``(N_i, num_classes)``, or None without ground truth; meta: per query dict
    with video_id, query_id, duration, fps, feat_stride, feat_num_frames.

    Two host-side facts the collator knows for free, so the model need not read them back from
    the device (a synchronisation on a GPU): ``video_lengths``, the valid features of each video
    row, and ``gt_extent``, the longest span (grid units) from a query's first window start to
    its last window end. None when unknown (a ``Batch`` built by hand): the model reads the masks.
    """

    videos: Tensor
    video_masks: Tensor
    texts: Tensor
    text_masks: Tensor
    video_index: Tensor
    segments: Optional[List[Tensor]]
    labels: Optional[List[Tensor]]
    meta: List[Dict[str, Any]]
    video_lengths: Optional[List[int]] = None
    gt_extent: Optional[float] = None

    @property
    def num_queries(self) -> int:
        return int(self.texts.shape[0])

    @property
    def num_videos(self) -> int:
        return int(self.videos.shape[0])

    @property
    def query_ids(self) -> List[str]:
        return [str(m.get("query_id")) for m in self.meta]

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> "Batch":
        """A copy with ``fn`` applied to every tensor (meta unchanged)."""
        return dataclasses.replace(
            self,
            videos=fn(self.videos),
            video_masks=fn(self.video_masks),
            texts=fn(self.texts),
            text_masks=fn(self.text_masks),
            video_index=fn(self.video_index),
            segments=None if self.segments is None else [fn(s) for s in self.segments],
            labels=None if self.labels is None else [fn(s) for s in self.labels],
        )

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None, non_blocking: bool = False) -> "Batch":
        """A copy with every tensor on ``device`` and the features in ``dtype`` (e.g. float64 for
        numerical checks; masks, indices and ground truth keep theirs)."""
        moved = self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))
        if dtype is None:
            return moved
        return dataclasses.replace(moved, videos=moved.videos.to(dtype), texts=moved.texts.to(dtype))

    def pin_memory(self) -> "Batch":
        """Called by ``DataLoader(pin_memory=True)``."""
        return self.map_tensors(lambda t: t.pin_memory())


def largest_stride(backbone_arch: Sequence[int], scale_factor: int) -> int:
    """The pyramid's largest stride: every padded video length must be a multiple of it (the
    strided convolutions halve the length ``backbone_arch[3] + backbone_arch[4]`` times)."""
    return scale_factor ** (backbone_arch[3] + backbone_arch[4])


@dataclasses.dataclass(frozen=True)
class BatchCollator:
    """The loader's ``collate_fn``: dataset items -> ``Batch`` by the model's padding rules.

    A plain picklable object, so DataLoader worker processes can run it.
    """

    max_seq_len: int
    pad_multiple: int
    video_pad_mode: str = "exact"
    text_pad_mode: str = "at_least_one"
    is_training: bool = False

    def __call__(self, items: Sequence[Dict[str, Any]]) -> "Batch":
        return collate(items, max_seq_len=self.max_seq_len, pad_multiple=self.pad_multiple,
                       video_pad_mode=self.video_pad_mode, text_pad_mode=self.text_pad_mode,
                       is_training=self.is_training)

    @classmethod
    def from_config(cls, cfg: Dict[str, Any], is_training: bool) -> "BatchCollator":
        """The collator of a loaded config (``dataset.max_seq_len`` and the model's batching keys)."""
        model = cfg["model"]
        return cls(cfg["dataset"]["max_seq_len"], largest_stride(model["backbone_arch"], model["scale_factor"]),
                   model["video_pad_mode"], model["text_pad_mode"], is_training)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def video_padded_length(
    num_feats: int, max_seq_len: int, pad_multiple: int, mode: str = "exact", is_training: bool = False,
    item_id: str = "?",
) -> int:
    """The padded length one clip of ``num_feats`` features needs (see the module docstring)."""
    if num_feats > max_seq_len:
        if is_training:
            raise DataError(
                f"{item_id}: {num_feats} video features exceed max_seq_len {max_seq_len} in training "
                "(the dataset should crop long clips)"
            )
        return round_up(num_feats + pad_multiple, pad_multiple)
    if mode == "reference":
        return max_seq_len
    return min(max_seq_len, round_up(num_feats + pad_multiple, pad_multiple))


def text_padded_length(num_tokens: Sequence[int], mode: str = "at_least_one") -> int:
    """The padded text length of a batch with these query lengths (see the module docstring)."""
    longest = max(num_tokens)
    return longest + 1 if mode == "at_least_one" else longest


def pad_sequences(seqs: Sequence[Tensor], length: int) -> Tuple[Tensor, Tensor]:
    """Zero-pad channel-first ``(C, T_i)`` tensors to ``(N, C, length)``; mask ``(N, 1, length)`` bool."""
    channels = seqs[0].shape[0]
    padded = seqs[0].new_zeros(len(seqs), channels, length)  # (N, C, length)
    for row, seq in zip(padded, seqs):
        row[:, : seq.shape[-1]].copy_(seq)
    lengths = torch.as_tensor([s.shape[-1] for s in seqs], device=padded.device)
    mask = torch.arange(length, device=padded.device)[None, :] < lengths[:, None]  # (N, length)
    return padded, mask.unsqueeze(1)


def _as_tensor(value: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return torch.as_tensor(value).to(dtype)


def _item_id(item: Dict[str, Any]) -> str:
    return f"query {item.get('query_id', '?')!r} (video {item.get('video_id', '?')!r})"


def _check_feature(item: Dict[str, Any], key: str, channels: Optional[int]) -> Tensor:
    if key not in item:
        raise DataError(f"{_item_id(item)}: missing {key!r}")
    feat = _as_tensor(item[key], torch.float32)
    if feat.dim() != 2 or feat.shape[-1] == 0:
        raise DataError(f"{_item_id(item)}: {key!r} must be a non-empty channel-first (C, T) array, "
                        f"got shape {tuple(feat.shape)}")
    if channels is not None and feat.shape[0] != channels:
        raise DataError(f"{_item_id(item)}: {key!r} has {feat.shape[0]} channels, the batch has {channels}")
    return feat


def group_videos(items: Sequence[Dict[str, Any]], feats: Sequence[Tensor]) -> Tuple[List[int], List[int]]:
    """Rows of distinct clips: returns (item index holding each row's features, row per item).

    Items share a row when they have the same ``video_id`` and identical features (a dataset
    that crops per query yields different features for one clip; those get rows of their own).
    """
    row_items: List[int] = []
    rows_by_video: Dict[Any, List[int]] = {}
    video_index = []
    for idx, (item, feat) in enumerate(zip(items, feats)):
        row = None
        for candidate in rows_by_video.get(item.get("video_id"), []):
            other = feats[row_items[candidate]]
            if other is feat or (other.shape == feat.shape and torch.equal(other, feat)):
                row = candidate
                break
        if row is None:
            row = len(row_items)
            row_items.append(idx)
            rows_by_video.setdefault(item.get("video_id"), []).append(row)
        video_index.append(row)
    return row_items, video_index


def _ground_truth(items: Sequence[Dict[str, Any]], is_training: bool):
    segments, labels = [], []
    for item in items:
        seg, lab = item.get("segments"), item.get("one_hot_labels")
        if seg is None or lab is None:
            if is_training:
                raise DataError(f"{_item_id(item)}: training needs 'segments' and 'one_hot_labels', got None")
            return None, None
        seg = _as_tensor(seg, torch.float64)
        lab = _as_tensor(lab, torch.int64)
        if seg.dim() != 2 or seg.shape[-1] != 2 or lab.dim() != 2 or lab.shape[0] != seg.shape[0]:
            raise DataError(f"{_item_id(item)}: expected segments (N, 2) and one_hot_labels (N, num_classes), "
                            f"got {tuple(seg.shape)} and {tuple(lab.shape)}")
        segments.append(seg)
        labels.append(lab)
    return segments, labels


def collate(
    items: Sequence[Dict[str, Any]],
    *,
    max_seq_len: int,
    pad_multiple: int,
    video_pad_mode: str = "exact",
    text_pad_mode: str = "at_least_one",
    is_training: bool = False,
) -> Batch:
    """Batch dataset items (reference layout, one query each) into a video-centric ``Batch``."""
    if video_pad_mode not in VIDEO_PAD_MODES:
        raise ConfigError(f"model.video_pad_mode: expected one of {VIDEO_PAD_MODES}, got {video_pad_mode!r}")
    if text_pad_mode not in TEXT_PAD_MODES:
        raise ConfigError(f"model.text_pad_mode: expected one of {TEXT_PAD_MODES}, got {text_pad_mode!r}")
    if max_seq_len % pad_multiple != 0:
        raise ConfigError(f"dataset.max_seq_len {max_seq_len} must be a multiple of the largest stride {pad_multiple}")
    if len(items) == 0:
        raise DataError("collate: empty batch")

    feats: List[Tensor] = []
    texts: List[Tensor] = []
    for item in items:
        feats.append(_check_feature(item, "feats", feats[0].shape[0] if feats else None))
        texts.append(_check_feature(item, "query_feats", texts[0].shape[0] if texts else None))

    row_items, video_index = group_videos(items, feats)
    video_len = max(
        video_padded_length(feats[i].shape[-1], max_seq_len, pad_multiple, video_pad_mode, is_training,
                            _item_id(items[i]))
        for i in row_items
    )
    videos, video_masks = pad_sequences([feats[i] for i in row_items], video_len)  # (V, C_v, T)
    text_len = text_padded_length([t.shape[-1] for t in texts], text_pad_mode)
    texts_padded, text_masks = pad_sequences(texts, text_len)  # (Q, C_t, L)
    segments, labels = _ground_truth(items, is_training)
    meta = [{key: item.get(key) for key in META_KEYS} for item in items]
    extents = [float(s[:, 1].max() - s[:, 0].min()) for s in segments or [] if s.shape[0] > 0]
    return Batch(
        videos=videos,
        video_masks=video_masks,
        texts=texts_padded,
        text_masks=text_masks,
        video_index=torch.as_tensor(video_index, dtype=torch.int64, device=videos.device),
        segments=segments,
        labels=labels,
        meta=meta,
        video_lengths=[int(feats[i].shape[-1]) for i in row_items],
        gt_extent=max(extents, default=0.0) if segments is not None else None,
    )
