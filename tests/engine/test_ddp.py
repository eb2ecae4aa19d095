"""Two CPU processes (gloo): the first step's averaged gradients equal a one-process step over
the same global batch, and the loss normaliser is synchronised across ranks."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from libs.utils import comm
from tests.engine.test_trainer import ToyModel, build_trainer, standard_hooks, toy_items, toy_loader

WORLD_SIZE = 2


def _worker(rank, folder):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        items = toy_items(4)
        model = ToyModel(normalizer=True)
        # rank 0 gets items 0 and 2, rank 1 items 1 and 3: one batch, one step each
        trainer = build_trainer(model, toy_loader(items, 2, num_replicas=WORLD_SIZE, rank=rank, shuffle=False),
                                clip=-1)
        standard_hooks(trainer)
        trainer.train(0, 1)
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        torch.save({"grads": grads, "normalizer": model.criterion.normalizer.value,
                    "mean": comm.all_reduce_mean(float(rank))}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_process_step_equals_one_process_step(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]

    # one process, the whole batch; the synchronised normaliser sees the mean positive count
    # per rank ((0 + 2) and (1 + 3) -> 3), which is the global count / 2
    items = toy_items(4)
    ref = ToyModel(normalizer=True)
    ref.criterion.reduce_count = lambda num_pos: num_pos / WORLD_SIZE
    ref(items)["final_loss"].backward()

    expected_norm = 0.9 * 10.0 + 0.1 * 3
    for r, result in enumerate(ranks):
        assert result["normalizer"] == pytest.approx(expected_norm, rel=1e-12), r
        assert result["mean"] == 0.5
        for name, param in ref.named_parameters():
            torch.testing.assert_close(result["grads"][name], param.grad, rtol=0, atol=1e-6)
    for name in ranks[0]["grads"]:
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name])
