"""The learning-rate schedule against the reference's per-step values (golden schedule.json)."""
import json
import math

import pytest
import torch

from libs.core.errors import ConfigError
from libs.utils.lr_schedule import WarmupLRSchedule, make_scheduler
from tests.conftest import fixture_path


def _golden():
    with open(fixture_path("golden", "schedule", "schedule.json")) as f:
        return json.load(f)


def _optimizer(base_lrs):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    return torch.optim.AdamW([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=base_lrs[0])


@pytest.mark.parametrize("variant", ["two_groups", "four_groups_backbone_lr_weight_0.1"])
def test_every_step_matches_reference(variant):
    golden = _golden()
    var = golden["variants"][variant]
    optimizer = _optimizer([g["lr_base"] for g in var["groups"]])
    scheduler = make_scheduler(optimizer, golden["opt"], golden["iters_per_epoch"])
    assert scheduler.warmup_steps == golden["warmup_steps"] == 28
    assert scheduler.total_steps == golden["total_steps"] == 70
    for step, expected in enumerate(var["lr_per_step"]):
        got = [g["lr"] for g in optimizer.param_groups]
        for lr, ref in zip(got, expected):
            assert lr == pytest.approx(ref, rel=1e-15, abs=0.0), (step, lr, ref)
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(var["lr_after_last_step"], rel=1e-15)


def test_first_step_is_zero_and_warmup_end_is_base():
    optimizer = _optimizer([1.0])
    scheduler = WarmupLRSchedule(optimizer, schedule_type="cosine", warmup_steps=5, total_steps=15)
    assert scheduler.lr_at(0) == [0.0]
    assert scheduler.lr_at(2) == [0.5]
    assert scheduler.lr_at(4) == [1.0] and scheduler.lr_at(5) == [1.0]
    # half way through the cosine: eta_min + (base - eta_min) / 2
    assert scheduler.lr_at(10)[0] == pytest.approx(1e-8 + 0.5 * (1 - 1e-8), rel=1e-15)


def test_constant_and_multistep():
    optimizer = _optimizer([2.0])
    constant = WarmupLRSchedule(optimizer, schedule_type="constant", warmup_steps=3, total_steps=10)
    assert [constant.lr_at(t)[0] for t in range(6)] == [0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    multistep = make_scheduler(
        optimizer,
        {"epochs": 4, "warmup": True, "warmup_epochs": 1, "schedule_type": "multistep",
         "schedule_steps": [1, 2], "schedule_gamma": 0.1},
        iters_per_epoch=2,
    )
    # W = 2; milestones at 2 and 4 steps after the warm-up
    got = [multistep.lr_at(t)[0] for t in range(9)]
    want = [0.0, 2.0, 2.0, 2.0, 0.2, 0.2, 0.02, 0.02, 0.02]
    assert got == pytest.approx(want, rel=1e-12)


def test_cosine_without_warmup_decays_to_zero():
    optimizer = _optimizer([1.0])
    scheduler = make_scheduler(optimizer, {"epochs": 2, "warmup": False, "schedule_type": "cosine"}, 2)
    assert [scheduler.lr_at(t)[0] for t in range(5)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0], abs=1e-15)


def test_state_dict_round_trip_resumes_schedule():
    opt_a, opt_b = _optimizer([1.0]), _optimizer([1.0])
    a = WarmupLRSchedule(opt_a, schedule_type="cosine", warmup_steps=3, total_steps=20)
    for _ in range(7):
        a.step()
    b = WarmupLRSchedule(opt_b, schedule_type="cosine", warmup_steps=3, total_steps=20)
    b.load_state_dict(a.state_dict())
    assert opt_b.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"] == a.lr_at(7)[0]


def test_bad_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="schedule_type"):
        WarmupLRSchedule(_optimizer([1.0]), schedule_type="linear", warmup_steps=1, total_steps=2)
    with pytest.raises(ConfigError, match="optimizer steps per epoch"):
        make_scheduler(_optimizer([1.0]), {"epochs": 1}, 0)
