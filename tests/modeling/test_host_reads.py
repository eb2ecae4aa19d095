"""A training step reads the device back on the host once: the loss normaliser's positive count.

Host reads (``.item()``, ``.tolist()``, ``int()``/``bool()``/``float()`` of a tensor) are free on
a CPU but stall a GPU's queue. The collator hands the model what it knows on the host (video
lengths, the ground truth's extent), so the pyramid trimming and the sparse regression head
need no read; a ``Batch`` without those facts takes the reading path and gives the same numbers.
"""
import collections
import dataclasses

import pytest
import torch

from libs.core.config import load_config
from libs.datasets.collate import BatchCollator
from libs.modeling.models import make_meta_arch

HOST_READS = ("item", "tolist", "__int__", "__bool__", "__float__", "__index__")


def count_host_reads(monkeypatch):
    """From now on, count the calls of each host-reading Tensor method (until the test ends)."""
    calls = collections.Counter()
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def model_and_batch():
    cfg = load_config("configs/demo.yaml")
    torch.manual_seed(0)
    model = make_meta_arch(cfg["model_name"], **{**cfg["model"], "input_txt_dim": 16}).train()
    model.set_drop_path(0.0)
    generator = torch.Generator().manual_seed(0)
    items = []
    for q, (clip, start, length, frames) in enumerate([(0, 10.0, 12.0, 150), (0, 60.0, 3.0, 150),
                                                       (1, 5.0, 40.5, 90), (1, 70.0, 8.0, 90)]):
        items.append({"video_id": f"v{clip}", "feats": torch.randn(128, frames, generator=torch.Generator().manual_seed(clip)),
                      "fps": 30, "duration": frames * 16.043 / 30, "feat_stride": 16.043, "feat_num_frames": 16.043,
                      "segments": torch.tensor([[start, start + length]], dtype=torch.float64),
                      "one_hot_labels": torch.ones(1, 1, dtype=torch.int64), "query_id": f"q{q}", "query": "",
                      "query_feats": torch.randn(16, 7 + q, generator=generator)})
    return model, BatchCollator.from_config(cfg, is_training=True)(items)


def test_one_training_step_reads_the_host_once(monkeypatch):
    model, batch = model_and_batch()  # the collator reads its CPU tensors: not the device
    assert batch.video_lengths == [150, 90] and batch.gt_extent == pytest.approx(40.5)
    calls = count_host_reads(monkeypatch)
    losses = model(batch)
    losses["final_loss"].backward()
    assert dict(calls) == {"item": 1}  # the loss normaliser's count of positive points


def test_host_facts_give_the_numbers_the_device_reads_give():
    results = []
    for facts in (True, False):
        model, batch = model_and_batch()
        if not facts:
            batch = dataclasses.replace(batch, video_lengths=None, gt_extent=None)
        losses = model(batch)
        losses["final_loss"].backward()
        results.append((losses, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (with_facts, grads), (without, grads_read) = results
    for key in ("cls_loss", "reg_loss", "final_loss"):
        torch.testing.assert_close(with_facts[key], without[key], rtol=0, atol=1e-6)
    assert grads.keys() == grads_read.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_read[name], rtol=0, atol=1e-6, msg=name)
