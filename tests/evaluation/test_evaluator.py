"""inference_on_dataset and the recall evaluator, with a toy model (no network needed)."""
import dataclasses

import pytest
import torch
from torch import nn

from libs.evaluation.evaluator import RecallEvaluator, ReferringRecall, inference_on_dataset, move_to_device
from tests.conftest import require_shared

GT_RECORDS = [
    {"query": "q", "query_id": "a_0", "duration": 100.0, "video_id": "c1", "query_type": "nlq",
     "timestamps": [[10.0, 20.0]]},
    {"query": "q", "query_id": "a_1", "duration": 100.0, "video_id": "c1", "query_type": "nlq",
     "timestamps": [[40.0, 50.0]]},
]


class EchoModel(nn.Module):
    """Predicts each item's 'guess' window; records its mode and the device it saw."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.modes = []

    def forward(self, items):
        self.modes.append((self.training, torch.is_grad_enabled()))
        return [{"video_id": it["video_id"], "query_id": it["query_id"],
                 "segments": it["guess"] * self.scale,  # (1, 2) seconds
                 "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.int64)} for it in items]


def test_inference_collects_results_in_eval_mode_and_restores_mode():
    loader = [
        [{"video_id": "c1", "query_id": "a_0", "guess": torch.tensor([[10.0, 20.0]])}],
        [{"video_id": "c1", "query_id": "a_1", "guess": torch.tensor([[45.0, 50.0]])}],
    ]
    model = EchoModel().train()
    evaluator = RecallEvaluator(GT_RECORDS)
    results = inference_on_dataset(model, loader, "cpu", progress=False, evaluator=evaluator)
    assert model.modes == [(False, False), (False, False)] and model.training
    assert [r["query_id"] for r in results] == ["a_0", "a_1"]
    assert not results[0]["segments"].requires_grad
    metrics = evaluator.evaluate()
    assert metrics["R1@0.3"] == 100.0 and metrics["R1@0.5"] == 50.0 and metrics["mIoU"] == pytest.approx(75.0)
    assert "Evaluated: 2 / 2 instances" in evaluator.format(metrics)
    evaluator.reset()
    evaluator.process(None, results[:1])
    assert evaluator.evaluate()["num_queries"] == 1


@dataclasses.dataclass
class ToyBatch:
    videos: torch.Tensor
    segments: list
    meta: list


def test_move_to_device_walks_dataclasses_and_containers():
    batch = ToyBatch(torch.zeros(1, 2, 3), [torch.ones(1, 2, dtype=torch.float64), None], [{"fps": 30}])
    moved = move_to_device(batch, "meta")
    assert moved.videos.device.type == "meta" and moved.segments[0].device.type == "meta"
    assert moved.segments[0].dtype == torch.float64 and moved.segments[1] is None and moved.meta == [{"fps": 30}]
    assert batch.videos.device.type == "cpu"


def test_referring_recall_keeps_the_reference_constructor():
    gt_file = require_shared("data", "ego4d_nlq_v2", "nlq_val.json")
    evaluator = ReferringRecall("ego4d", gt_file)
    assert evaluator.gt.num_gt_queries == 4554 and evaluator.gt_file == gt_file
