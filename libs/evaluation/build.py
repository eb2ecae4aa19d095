"""The evaluation split of a config: its records, dataset, loader and ground truth.

One builder for ``train.py`` (validation during training, sharded over processes) and ``eval.py``
(a checkpoint on val or test), so both read the same split the same way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from torch.utils.data import DataLoader, Dataset

from libs.core.errors import ConfigError
from libs.datasets.collate import BatchCollator
from libs.datasets.datasets import make_data_loader, make_dataset
from libs.evaluation.metrics import GroundTruth, load_ground_truth


@dataclass
class EvaluationSplit:
    """What evaluating on a split needs; ``ground_truth`` is None when not asked for (test)."""

    records_file: str
    dataset: Dataset
    loader: DataLoader
    ground_truth: Optional[GroundTruth]


def evaluation_records(cfg: Dict[str, Any]) -> Optional[str]:
    """The split's jsonl records (``dataset.val_jsonl_file``) when the file exists, else None."""
    path = cfg["dataset"].get("val_jsonl_file")
    return path if path and os.path.isfile(path) else None


def build_evaluation(cfg: Dict[str, Any], with_ground_truth: bool = True, num_replicas: int = 1,
                     rank: int = 0) -> EvaluationSplit:
    """Dataset, loader (``Batch`` batches, a clip's queries together when ``loader.video_centric``;
    replica ``rank`` of ``num_replicas``) and ground truth (the official json ``dataset.json_file``
    when it exists, else the records' own windows) of the config's evaluation split."""
    records_file = evaluation_records(cfg)
    if records_file is None:
        raise ConfigError(f"dataset.val_jsonl_file {cfg['dataset'].get('val_jsonl_file')!r} "
                          "(the split to evaluate) not found")
    dataset = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    loader = make_data_loader(
        dataset, False, None, cfg["loader"]["eval_batch_size"], cfg["loader"]["num_workers"],
        collate_fn=BatchCollator.from_config(cfg, is_training=False), video_centric=cfg["loader"]["video_centric"],
        num_replicas=num_replicas, rank=rank,
    )
    ground_truth = None
    if with_ground_truth:
        gt_file = cfg["dataset"].get("json_file")
        ground_truth = load_ground_truth(gt_file if gt_file and os.path.isfile(gt_file) else records_file)
    return EvaluationSplit(records_file, dataset, loader, ground_truth)
