"""Running a model over a dataset, and the recall evaluator (Detectron2's evaluator pattern).

``inference_on_dataset`` knows nothing about metrics: it runs the network on each ``Batch``
and post-processes the head outputs into per-query results. ``RecallEvaluator`` knows nothing
about the model: it collects per-query results (``reset / process``) and scores them with the
official metric (``evaluate``), so the trainer's eval hook and ``eval.py`` share one path.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch

from libs.evaluation.metrics import (
    DEFAULT_KS,
    DEFAULT_THRESHOLDS,
    GroundTruth,
    evaluate_predictions,
    format_metrics_table,
    load_ground_truth,
    windows_per_query,
)
from libs.evaluation.postprocess import results_of_heads
from libs.utils import comm
from libs.utils.amp import autocast


def _result_to_cpu(result: dict) -> dict:
    """A per-query result with its tensors detached on the CPU (keeps GPU memory flat)."""
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in result.items()}


def inference_on_dataset(
    model: torch.nn.Module,
    data_loader: Iterable,
    device: Union[str, torch.device],
    test_cfg: Mapping[str, Any],
    progress: bool = True,
    evaluator: "RecallEvaluator | None" = None,
    amp: Optional[str] = None,
) -> list[dict]:
    """Run ``model`` in eval mode over every ``Batch``; return per-query result dicts on the CPU.

    Each batch is moved to ``device``, its head outputs post-processed there with ``test_cfg``
    (NMS included) and only the final windows come back to the CPU. The model's train/eval mode
    is restored afterwards. When ``evaluator`` is given, each batch's results also go to
    ``evaluator.process``. ``amp`` ("bf16" / "fp16"): the network runs under autocast, decoding
    and NMS in float32.
    """
    was_training = model.training
    model.eval()
    results: list[dict] = []
    iterator = data_loader
    if progress:
        from tqdm import tqdm

        total = len(data_loader) if hasattr(data_loader, "__len__") else None
        iterator = tqdm(data_loader, total=total, desc="inference", dynamic_ncols=True)
    try:
        with torch.no_grad():
            for batch in iterator:
                batch = batch.to(device, non_blocking=True)
                with autocast(device, amp):
                    heads = model(batch)
                outputs = [_result_to_cpu(r) for r in results_of_heads(heads.float(), batch.meta, test_cfg)]
                if evaluator is not None:
                    evaluator.process(batch, outputs)
                results.extend(outputs)
    finally:
        model.train(was_training)
    return results


def gather_results(results: Sequence[dict]) -> list[dict]:
    """Every process's results, on every process, in the order one process would give them.

    The evaluation loaders give each process a contiguous block of the split (the last block
    padded by repeating the first queries), so the blocks concatenated in rank order, without the
    queries seen before, are exactly one process's list. One process: ``results`` unchanged.
    """
    merged, seen = [], set()
    for part in comm.all_gather_object(list(results)):
        for result in part:
            key = (result["video_id"], result["query_id"])
            if key not in seen:
                seen.add(key)
                merged.append(result)
    return merged


class RecallEvaluator:
    """Official Ego4D NLQ recall of the results seen since ``reset`` (single process).

    ``gt``: the official NLQ json (path or dict), jsonl records, or a ``GroundTruth``.
    """

    def __init__(
        self,
        gt: Union[str, dict, list, GroundTruth],
        ks: Sequence[int] = DEFAULT_KS,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ) -> None:
        self.gt = load_ground_truth(gt)
        self.ks = tuple(ks)
        self.thresholds = tuple(thresholds)
        self._results: list[dict] = []
        self._windows: int | None = None  # windows per query of the last evaluated results

    def reset(self) -> None:
        """Forget the results collected so far."""
        self._results = []

    def process(self, inputs: Any, outputs: Sequence[dict]) -> None:
        """Collect one batch's per-query results (``inputs`` is unused; Detectron2 signature)."""
        self._results.extend(_result_to_cpu(r) for r in outputs)

    @property
    def results(self) -> list[dict]:
        return list(self._results)

    def evaluate(self, predictions: Sequence[dict] | None = None) -> dict:
        """Recall@K,IoU and mIoU (percentages) of ``predictions`` or of the processed results."""
        results = self._results if predictions is None else predictions
        metrics = evaluate_predictions(results, self.gt, self.ks, self.thresholds)
        self._windows = windows_per_query(results)
        return metrics

    def format(self, metrics: dict, title: str | None = None) -> str:
        """Printable summary: evaluated count, then ``title`` and the ASCII table (without R@K's
        that only repeat the K before, given the windows per query of the last ``evaluate``)."""
        header = f"Evaluated: {metrics['num_queries']} / {self.gt.num_gt_queries} instances"
        return header + "\n" + format_metrics_table(metrics, self.ks, self.thresholds, title=title,
                                                     windows=self._windows)


class ReferringRecall(RecallEvaluator):
    """The reference's name and constructor (``ReferringRecall(dataset, gt_file)``).

    ``gt_file`` is the official json or jsonl records (whatever ``load_ground_truth`` reads);
    ``dataset`` is kept for the signature only. ``evaluate`` returns the metrics dict, not the
    reference's (array, table) pair; ``format`` gives its printout.
    """

    def __init__(
        self, dataset: str = "ego4d", gt_file: str = "./ego4d_data/ego4d_nlq_v2_ori_data/nlq_val.json"
    ) -> None:
        self.dataset = dataset
        self.gt_file = gt_file
        super().__init__(gt_file)
