"""Video-centric batch sampler and data loaders: coverage, grouping, sharding, resume."""
import random
from collections import Counter

import numpy as np
import pytest
import torch

from libs.core.errors import ConfigError
from libs.datasets.data_utils import worker_init_fn
from libs.datasets.datasets import make_data_loader, set_loader_epoch
from libs.datasets.samplers import ReferenceBatchSampler, VideoCentricBatchSampler, pack_chunks, split_group


def _video_ids(seed=0, num_clips=15):
    """Clips with 1..12 queries each, interleaved in the file as real jsonl files are not."""
    rng = random.Random(seed)
    ids = [f"clip{c}" for c in range(num_clips) for _ in range(rng.randint(1, 12))]
    rng.shuffle(ids)
    return ids


def test_hand_example_without_shuffle():
    ids = ["a", "a", "a", "b", "c", "c", "c", "c", "c"]
    sampler = VideoCentricBatchSampler(ids, batch_size=4, shuffle=False)
    # a (3) + b (1) share a batch; c (5 > 4) is split into 3 + 2 chunks
    assert list(sampler) == [[0, 1, 2, 3], [4, 5, 6], [7, 8]]
    assert len(sampler) == 3


def test_split_and_pack_helpers():
    assert split_group(list(range(11)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert split_group(list(range(9)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert pack_chunks([[0], [1, 2], [3, 4, 5], [6]], 3) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_index_once_and_clips_grouped(shuffle):
    ids = _video_ids()
    sampler = VideoCentricBatchSampler(ids, batch_size=8, shuffle=shuffle, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(ids)))
        assert all(1 <= len(b) <= 8 for b in batches)
        assert len(batches) == len(sampler)
        per_clip = Counter(ids)
        for clip, count in per_clip.items():
            holding = [k for k, b in enumerate(batches) if any(ids[i] == clip for i in b)]
            assert len(holding) == -(-count // 8)  # one batch, or ceil(n / 8) chunks of a big clip


def test_set_epoch_reshuffles_deterministically():
    ids = _video_ids()
    a = VideoCentricBatchSampler(ids, batch_size=8, seed=1)
    b = VideoCentricBatchSampler(ids, batch_size=8, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(VideoCentricBatchSampler(ids, batch_size=8, seed=2)) != list(
        VideoCentricBatchSampler(ids, batch_size=8, seed=1))


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_have_equal_batch_counts(drop_last):
    ids = _video_ids(seed=1)
    full = VideoCentricBatchSampler(ids, batch_size=8, seed=0)
    total = len(list(full))
    shards = [list(VideoCentricBatchSampler(ids, batch_size=8, seed=0, drop_last=drop_last,
                                            num_replicas=3, rank=r)) for r in range(3)]
    counts = {len(s) for s in shards}
    assert len(counts) == 1
    per_rank = counts.pop()
    assert per_rank == (total // 3 if drop_last else -(-total // 3))
    flat = [i for shard in shards for b in shard for i in b]
    if drop_last:
        assert len(flat) == len(set(flat))  # nothing repeated
    else:
        assert set(flat) == set(range(len(ids)))  # padded by repeating, so everything is seen


@pytest.mark.parametrize("video_centric", [True, False])
def test_resume_skips_done_batches_once(video_centric):
    ids = _video_ids()

    def make():
        if video_centric:
            return VideoCentricBatchSampler(ids, batch_size=8, seed=0)
        return ReferenceBatchSampler(len(ids), batch_size=3, shuffle=True, seed=0, drop_last=True)

    sampler = make()
    sampler.set_epoch(2)
    whole = list(sampler)
    resumed = make()
    resumed.set_epoch(2, start_batch=3)
    assert len(resumed) == len(whole)  # the epoch's full count
    assert list(resumed) == whole[3:]
    assert list(resumed) == whole  # the offset applies to one pass only
    other = make()
    other.set_epoch(3)
    assert list(other) != whole


def test_reference_batches_shard_contiguously_in_evaluation_and_like_distributed_sampler_in_training():
    shards = [ReferenceBatchSampler(9, batch_size=2, shuffle=False, num_replicas=3, rank=r) for r in range(3)]
    # one process's batches [0, 1] [2, 3] [4, 5] [6, 7] [8], in blocks, padded by repeating the first
    assert [list(s) for s in shards] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8], [0, 1]]]
    for rank in range(3):
        sampler = ReferenceBatchSampler(10, batch_size=2, shuffle=True, seed=5, drop_last=True, num_replicas=3, rank=rank)
        sampler.set_epoch(4)
        torch_order = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=rank, shuffle=True, seed=5)
        torch_order.set_epoch(4)
        assert [i for batch in sampler for i in batch] == list(torch_order)[:4]
    with pytest.raises(ConfigError, match="rank 3"):
        ReferenceBatchSampler(10, batch_size=2, num_replicas=3, rank=3)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="batch_size"):
        VideoCentricBatchSampler(["a"], batch_size=0)
    with pytest.raises(ConfigError, match="rank 2"):
        VideoCentricBatchSampler(["a"], batch_size=2, num_replicas=2, rank=2)


class _ToyDataset(torch.utils.data.Dataset):
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def video_id_of(self, index):
        return self.ids[index]

    def __getitem__(self, index):
        return {"video_id": self.ids[index], "index": index}


def test_reference_sampling_keeps_file_order_in_evaluation_and_drops_the_last_batch_in_training():
    dataset = _ToyDataset(["a", "b", "c", "d", "e"])
    loader = make_data_loader(dataset, False, None, batch_size=2, num_workers=0, collate_fn=list)
    assert [[item["index"] for item in batch] for batch in loader] == [[0, 1], [2, 3], [4]]
    generator = torch.Generator().manual_seed(0)
    train = make_data_loader(dataset, True, generator, batch_size=2, num_workers=0, collate_fn=list)
    set_loader_epoch(train, 1)
    batches = [[item["index"] for item in batch] for batch in train]
    assert len(batches) == 2 and all(len(b) == 2 for b in batches)  # drop_last in training


def test_video_centric_loader_groups_and_shards():
    ids = ["a", "a", "b", "c", "c", "c"]
    dataset = _ToyDataset(ids)
    loader = make_data_loader(dataset, False, None, batch_size=3, num_workers=0, collate_fn=list, video_centric=True)
    assert [[item["index"] for item in batch] for batch in loader] == [[0, 1, 2], [3, 4, 5]]
    shards = [make_data_loader(dataset, True, torch.Generator(), batch_size=3, num_workers=0, collate_fn=list,
                               video_centric=True, num_replicas=2, rank=r, seed=7) for r in range(2)]
    for shard in shards:
        set_loader_epoch(shard, 1)
    seen = sorted(item["index"] for shard in shards for batch in shard for item in batch)
    assert seen == list(range(6))


def test_worker_init_fn_seeds_numpy_and_random():
    torch.manual_seed(2**31 + 5)  # worker seeds are taken modulo 2**31
    worker_init_fn(0)
    got = (np.random.rand(), random.random())
    np.random.seed(5)
    random.seed(5)
    assert got == (np.random.rand(), random.random())


def test_only_our_loaders_resume_mid_epoch():
    plain = torch.utils.data.DataLoader(list(range(6)), batch_size=2)
    set_loader_epoch(plain, 1)  # nothing to reshuffle: fine
    with pytest.raises(ConfigError, match="resuming mid-epoch needs a loader made by make_data_loader"):
        set_loader_epoch(plain, 1, start_batch=2)
