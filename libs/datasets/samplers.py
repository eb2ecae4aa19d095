"""Video-centric batch sampling: the queries of one clip travel in the same batch.

The reference makes one item per query and batches them at random, so a clip with 11 queries is
read, decoded and embedded 11 times (spec 12 item 2). Grouping a clip's queries lets the collate
keep one copy of the video per batch and the model embed it once (SnAG's video-centric sampling).

Per epoch: group indices by clip; shuffle clip order and the queries inside each clip (seeded by
``seed + epoch``, so every replica computes the same batches); split a clip with more than
``batch_size`` queries into near-equal chunks; pack chunks in order into batches of at most
``batch_size`` queries (small clips share a batch); then give replica ``r`` batches
``r, r + R, r + 2R, ...`` (training) or the ``r``-th contiguous block (evaluation) after padding
(repeating the first batches) or, with ``drop_last``, truncating the list so that every replica
gets the same number of batches.
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler

from libs.core.errors import ConfigError


def group_by_video(video_ids: Sequence[str]) -> List[List[int]]:
    """Dataset indices grouped by clip, clips in order of first appearance."""
    groups: Dict[str, List[int]] = {}
    for index, video_id in enumerate(video_ids):
        groups.setdefault(video_id, []).append(index)
    return list(groups.values())


def split_group(indices: List[int], batch_size: int) -> List[List[int]]:
    """Split one clip's queries into ``ceil(n / batch_size)`` chunks whose sizes differ by <= 1."""
    num_chunks = math.ceil(len(indices) / batch_size)
    base, extra = divmod(len(indices), num_chunks)
    chunks, start = [], 0
    for k in range(num_chunks):
        size = base + (1 if k < extra else 0)
        chunks.append(indices[start:start + size])
        start += size
    return chunks


def pack_chunks(chunks: List[List[int]], batch_size: int) -> List[List[int]]:
    """Fill batches in order: a chunk joins the current batch if it fits, else opens a new one."""
    batches: List[List[int]] = []
    current: List[int] = []
    for chunk in chunks:
        if current and len(current) + len(chunk) > batch_size:
            batches.append(current)
            current = []
        current = current + chunk
    if current:
        batches.append(current)
    return batches


def _padded(items: list, needed: int) -> list:
    """``items`` cut or repeated from the start to ``needed`` entries (``DistributedSampler``'s padding)."""
    if needed > len(items) and items:
        return (items * math.ceil(needed / len(items)))[:needed]
    return items[:needed]


class VideoCentricBatchSampler(Sampler[List[int]]):
    """Yields lists of dataset indices; each list holds whole clips (or chunks of a big clip).

    ``batch_size`` is the most queries per batch. ``set_epoch(e)`` reshuffles deterministically;
    ``set_epoch(e, start_batch=k)`` makes the next pass skip the ``k`` batches this replica already
    ran in epoch ``e`` (resuming mid-epoch; skipped batches are never loaded). ``len()`` is always
    the full per-replica count of an epoch.
    """

    def __init__(self, video_ids: Sequence[str], batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0,
                 start_batch: int = 0) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"loader.batch_size must be a positive integer, got {batch_size!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"sampler rank {rank} is not in [0, num_replicas={num_replicas})")
        self.video_ids = list(video_ids)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_batch = start_batch
        self._groups = group_by_video(self.video_ids)
        self._cached: Optional[Tuple[Tuple[int, int], List[List[int]]]] = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's shuffle; ``start_batch`` batches of it are skipped on the next pass."""
        self.epoch = epoch
        self.start_batch = start_batch

    def all_batches(self) -> List[List[int]]:
        """Every batch of the current epoch, before sharding across replicas."""
        key = (self.epoch, self.seed)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._make_batches())
        return [list(b) for b in self._cached[1]]

    def _make_batches(self) -> List[List[int]]:
        groups = [list(g) for g in self._groups]
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(groups), generator=generator).tolist()
            groups = [groups[i] for i in order]
            groups = [[g[i] for i in torch.randperm(len(g), generator=generator).tolist()] for g in groups]
        chunks = [chunk for g in groups for chunk in split_group(g, self.batch_size)]
        return pack_chunks(chunks, self.batch_size)

    def _num_batches(self, total: int) -> int:
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def rank_batches(self) -> List[List[int]]:
        """This replica's batches of the current epoch (equal count on every replica): every R-th
        when shuffled (training), a contiguous block otherwise (evaluation: the replicas' results
        concatenated in rank order are one process's, see ``evaluator.gather_results``)."""
        batches = self.all_batches()
        per_rank = self._num_batches(len(batches))
        batches = _padded(batches, per_rank * self.num_replicas)
        if self.shuffle:
            return batches[self.rank::self.num_replicas]
        return batches[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.rank_batches()
        skip, self.start_batch = self.start_batch, 0  # a resume offset applies to one pass
        yield from batches[skip:]

    def __len__(self) -> int:
        # packing depends on the shuffle, so the count can differ by a batch or so between epochs
        return self._num_batches(len(self.all_batches()))


class ReferenceBatchSampler(Sampler[List[int]]):
    """The reference's batches: one query per slot, cut into lists of ``batch_size`` (with
    ``drop_last``, the last incomplete one is dropped). Shuffled (training): ``DistributedSampler``'s
    shard, by ``seed + epoch``, as the reference. In file order (evaluation): one process's batches,
    a contiguous block of them per replica, so the replicas' results concatenated in rank order are
    one process's, batch for batch. Either way the shards are padded by repetition to equal sizes.
    ``set_epoch(e, start_batch=k)`` as ``VideoCentricBatchSampler``'s."""

    def __init__(self, num_items: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"loader.batch_size must be a positive integer, got {batch_size!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"sampler rank {rank} is not in [0, num_replicas={num_replicas})")
        self.sampler: Optional[DistributedSampler] = None
        if shuffle:
            self.sampler = DistributedSampler(range(num_items), num_replicas=num_replicas, rank=rank, shuffle=True,
                                              seed=seed)
            self.batches: Sequence[List[int]] = BatchSampler(self.sampler, batch_size, drop_last)
        else:  # one process's batches, a contiguous block of them per replica
            batches = list(BatchSampler(range(num_items), batch_size, drop_last))
            per_rank = math.ceil(len(batches) / num_replicas)
            self.batches = _padded(batches, per_rank * num_replicas)[rank * per_rank:(rank + 1) * per_rank]
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[List[int]]:
        skip, self.start_batch = self.start_batch, 0  # a resume offset applies to one pass
        return itertools.islice(iter(self.batches), skip, None)

    def __len__(self) -> int:
        return len(self.batches)
