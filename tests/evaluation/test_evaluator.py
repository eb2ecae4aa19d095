"""inference_on_dataset (a tiny model over Batch batches) and the recall evaluator."""
import pytest
import torch

from libs.evaluation.evaluator import RecallEvaluator, ReferringRecall, inference_on_dataset
from libs.modeling import make_meta_arch
from tests.conftest import require_shared
from tests.golden import assert_same_results
from tests.modeling.test_fast_paths import SMALL, items

def tiny_model():
    torch.manual_seed(0)
    return make_meta_arch("LocPointTransformer", **SMALL, test_cfg={"max_seg_num": 5})


def clip_items():
    """Two clips: 2 and 1 queries."""
    return [dict(item, video_id=video, query_id=query)
            for item, video, query in zip(items(3), ["c1", "c1", "c2"], ["a_0", "a_1", "b_0"])]


def test_inference_runs_eval_mode_without_grad_and_gives_the_models_results():
    model = tiny_model().train()
    modes = []
    model.register_forward_pre_hook(lambda m, args: modes.append((m.training, torch.is_grad_enabled())))
    collator = model.collator(is_training=False)
    loader = [collator(clip_items()[:2]), collator(clip_items()[2:])]
    results = inference_on_dataset(model, loader, "cpu", model.test_cfg, progress=False)
    assert modes == [(False, False), (False, False)] and model.training
    assert [r["query_id"] for r in results] == ["a_0", "a_1", "b_0"]
    assert all(not r["segments"].requires_grad and r["segments"].device.type == "cpu" for r in results)
    with torch.no_grad():  # the reference's call (collate + network + post-processing), one batch of 3
        together = model.eval()(clip_items())
    assert all(0 < r["scores"].numel() <= 5 for r in results)
    assert_same_results(results, together)


def test_bf16_inference_runs_the_network_in_bf16_and_decodes_in_float32():
    model = tiny_model()
    dtypes = []
    model.cls_head.register_forward_hook(lambda m, args, out: dtypes.append(out[0].dtype))
    loader = [model.collator(is_training=False)(clip_items())]
    exact = inference_on_dataset(model, loader, "cpu", model.test_cfg, progress=False)
    rounded = inference_on_dataset(model, loader, "cpu", model.test_cfg, progress=False, amp="bf16")
    assert dtypes == [torch.float32, torch.bfloat16]
    for a, b in zip(exact, rounded):
        assert b["scores"].dtype == torch.float32 and b["segments"].dtype == a["segments"].dtype
        torch.testing.assert_close(b["scores"][:1], a["scores"][:1], atol=0.02, rtol=0)


def test_recall_evaluator_collects_and_scores():
    gt = [{"query": "q", "query_id": "a_0", "duration": 100.0, "video_id": "c1", "timestamps": [[10.0, 20.0]]},
          {"query": "q", "query_id": "a_1", "duration": 100.0, "video_id": "c1", "timestamps": [[40.0, 50.0]]}]
    results = [{"video_id": "c1", "query_id": "a_0", "segments": torch.tensor([[10.0, 20.0]])},
               {"video_id": "c1", "query_id": "a_1", "segments": torch.tensor([[45.0, 50.0]])}]
    evaluator = RecallEvaluator(gt)
    evaluator.process(None, results)
    metrics = evaluator.evaluate()
    assert metrics["R1@0.3"] == 100.0 and metrics["R1@0.5"] == 50.0 and metrics["mIoU"] == pytest.approx(75.0)
    printed = evaluator.format(metrics)
    assert "Evaluated: 2 / 2 instances" in printed and "R1@0.5" in printed and "R5@0.5" not in printed  # 1 window each
    evaluator.reset()
    evaluator.process(None, results[:1])
    assert evaluator.evaluate()["num_queries"] == 1


def test_referring_recall_keeps_the_reference_constructor():
    gt_file = require_shared("data", "ego4d_nlq_v2", "nlq_val.json")
    evaluator = ReferringRecall("ego4d", gt_file)
    assert evaluator.gt.num_gt_queries == 4554 and evaluator.gt_file == gt_file
