"""Dataset registry, ``make_dataset`` and ``make_data_loader``.

Two sampling modes: the reference's (one query per slot, ``DistributedSampler``-style shards)
and the video-centric one (``VideoCentricBatchSampler``: a clip's queries share a batch, so the
collate keeps one copy of the clip). Call :func:`set_loader_epoch` at the start of each epoch in
either mode.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from libs.core.errors import ConfigError

from . import ego4d, narration  # noqa: F401  (they register the built-in datasets)
from .collate import BatchCollator
from .data_utils import worker_init_fn
from .registry import DATASETS
from .samplers import ReferenceBatchSampler, VideoCentricBatchSampler

def make_dataset(name: str, is_training: bool, split: Sequence[str], **kwargs: Any) -> Dataset:
    """Build the registered dataset ``name`` with the config's ``dataset`` keyword arguments."""
    if name not in DATASETS:
        raise ConfigError(f"dataset_name {name!r} is not a registered dataset; known: {DATASETS.names()}")
    return DATASETS.get(name)(is_training=is_training, split=split, **kwargs)


def make_data_loader(dataset: Dataset, is_training: bool, generator: Optional[torch.Generator],
                     batch_size: int, num_workers: int, collate_fn: Callable,
                     video_centric: bool = False, num_replicas: int = 1, rank: int = 0,
                     seed: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` for replica ``rank`` of ``num_replicas``.

    ``collate_fn`` makes the batches (``BatchCollator``: items -> ``Batch``). Reference mode shards like
    ``DistributedSampler`` (shuffled in training, in file order in evaluation; the reference also
    shuffled evaluation, which only changes the order) and drops the last incomplete batch in
    training. Video-centric mode needs ``dataset.video_id_of(index)``; evaluation batches are not
    shuffled and shards are padded by repeating batches, as ``DistributedSampler`` pads.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"loader.batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"loader.num_workers must be an integer >= 0, got {num_workers!r}")
    if video_centric:
        if not hasattr(dataset, "video_id_of"):
            raise ConfigError(f"video-centric loading needs {type(dataset).__name__}.video_id_of(index)")
        video_ids = [dataset.video_id_of(i) for i in range(len(dataset))]
        batch_sampler: Any = VideoCentricBatchSampler(video_ids, batch_size, shuffle=is_training, seed=seed,
                                                      drop_last=False, num_replicas=num_replicas, rank=rank)
    else:
        batch_sampler = ReferenceBatchSampler(len(dataset), batch_size, shuffle=is_training, seed=seed,
                                              drop_last=is_training, num_replicas=num_replicas, rank=rank)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_fn,
                      worker_init_fn=worker_init_fn, persistent_workers=num_workers > 0,
                      generator=generator if is_training else None)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Reshuffle for ``epoch``; the next pass starts at batch ``start_batch`` (resuming mid-epoch).

    Loaders of ``make_data_loader`` do both; another loader's sampler is only reshuffled, and
    asking it to start mid-epoch is an error.
    """
    batch_sampler = loader.batch_sampler
    if isinstance(batch_sampler, (VideoCentricBatchSampler, ReferenceBatchSampler)):
        batch_sampler.set_epoch(epoch, start_batch=start_batch)
        return
    if start_batch:
        raise ConfigError("resuming mid-epoch needs a loader made by make_data_loader "
                          f"(this one samples with {type(batch_sampler).__name__})")
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def make_train_loader(cfg: Dict[str, Any], generator: torch.Generator, num_replicas: int = 1,
                      rank: int = 0) -> DataLoader:
    """The training loader of a loaded config: its dataset, ``Batch`` batches padded by the
    model's rules, replica ``rank`` of ``num_replicas``, shuffled by ``generator``/``init_rand_seed``."""
    dataset = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    return make_data_loader(
        dataset, True, generator, cfg["loader"]["batch_size"], cfg["loader"]["num_workers"],
        collate_fn=BatchCollator.from_config(cfg, is_training=True), video_centric=cfg["loader"]["video_centric"],
        num_replicas=num_replicas, rank=rank, seed=cfg["init_rand_seed"],
    )
