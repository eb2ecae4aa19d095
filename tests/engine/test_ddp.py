"""Two CPU processes (gloo) against one process: the batch semantics docs/many_processes.md states.

``loader.batch_size`` is per process and the loss normaliser counts positives per process (as in
the reference), so one process with batch B and ``init_loss_norm`` n is reproduced by N processes
with batch B/N and n/N: the same logged losses and, after the step, the same weights (float
rounding apart). Also: each rank draws its own random numbers once the weights are built."""
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from libs.datasets.samplers import ReferenceBatchSampler
from libs.engine import hooks as H
from libs.engine.trainer import SimpleTrainer, fix_random_seed, seed_per_rank
from libs.utils import comm
from libs.utils.lr_schedule import make_scheduler
from libs.utils.optim import make_optimizer
from tests.golden import build, inputs

WORLD_SIZE = 2
# SGD: the step is the averaged gradient itself (Adam's first step divides tiny gradients by
# their own size, which turns float rounding in them into changes of the weights)
OPT_CFG = {"type": "SGD", "momentum": 0.9, "learning_rate": 0.1, "weight_decay": 0.05, "epochs": 1, "warmup": False,
           "warmup_epochs": 0, "schedule_type": "cosine"}


def four_queries():
    items = inputs("tiny_model")
    extra = copy.deepcopy(items[0])
    extra.update(query_id="golden-extra_0", segments=torch.tensor([[60.0, 90.0]], dtype=torch.float64))
    return items + [extra]


def one_step(world_size, rank, init_loss_norm):
    """One optimizer step of the tiny golden model over this rank's share of four queries."""
    generator = fix_random_seed(3)
    model = build("tiny_model", video_pad_mode="exact", text_pad_mode="at_least_one",
                  train_cfg={**build("tiny_model").train_cfg, "init_loss_norm": init_loss_norm}).train()
    model.set_drop_path(0.0)
    seed_per_rank(3, rank, generator)
    sampler = ReferenceBatchSampler(4, 4 // world_size, shuffle=True, seed=0, drop_last=True,
                                    num_replicas=world_size, rank=rank)
    loader = DataLoader(four_queries(), batch_sampler=sampler, collate_fn=model.collator(is_training=True))
    optimizer = make_optimizer(model, OPT_CFG)
    trainer = SimpleTrainer(model, loader, optimizer, make_scheduler(optimizer, OPT_CFG, len(loader)),
                            clip_grad_l2norm=1.0, criterion=model.criterion)
    trainer.register_hooks([H.LRScheduler()])
    trainer.train(0, 1)
    return {"losses": {k: trainer.storage.history(k).latest() for k in ("cls_loss", "reg_loss", "final_loss")},
            "weights": {k: v.clone() for k, v in model.state_dict().items()},
            "normaliser": model.criterion.normalizer.value, "draw": torch.rand(3)}


def _worker(rank, folder):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    with comm.leave_group_when_done():
        result = one_step(WORLD_SIZE, rank, init_loss_norm=200.0 / WORLD_SIZE)
        result["mean"] = comm.all_reduce_mean(float(rank))
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_processes_with_half_the_batch_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    alone = one_step(1, 0, init_loss_norm=200.0)
    for result in ranks:
        assert result["mean"] == 0.5
        assert result["normaliser"] == pytest.approx(alone["normaliser"] / WORLD_SIZE, rel=1e-12)
        for key, value in alone["losses"].items():  # every rank logs the mean over the ranks
            assert result["losses"][key] == pytest.approx(value, rel=1e-5), key
        for name, value in alone["weights"].items():
            torch.testing.assert_close(result["weights"][name], value, rtol=1e-5, atol=1e-6)
    for name in ranks[0]["weights"]:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])
    assert not torch.equal(ranks[0]["draw"], ranks[1]["draw"])  # own random streams per rank
    assert torch.equal(ranks[0]["draw"], alone["draw"])  # rank 0 keeps a one-process run's streams


def test_seed_per_rank_leaves_rank_zero_alone():
    generator = fix_random_seed(7)
    seed_per_rank(7, 0, generator)
    first = (torch.rand(2), generator.initial_seed())
    generator = fix_random_seed(7)
    assert torch.equal(first[0], torch.rand(2)) and first[1] == 7
    seed_per_rank(7, 2, generator)
    second = torch.rand(2)
    fix_random_seed(9)
    assert torch.equal(second, torch.rand(2)) and generator.initial_seed() == 9
