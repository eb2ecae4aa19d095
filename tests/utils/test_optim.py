"""Parameter groups: the reference's decay rule and group order (golden schedule.json)."""
import json

import pytest
import torch
from torch import nn

from libs.core.errors import ConfigError
from libs.utils.optim import make_optimizer, split_decay
from tests.conftest import fixture_path


class ChannelLayerNorm(nn.Module):
    """Stands for the model's channel-first LayerNorm (a custom class whose name ends in Norm)."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.fc = nn.Linear(3, 1)
        self.norm = ChannelLayerNorm(3)
        self.ln = nn.LayerNorm(3)
        self.gain = Scale()
        self.cls_head = nn.Linear(3, 1)
        self.frozen = nn.Linear(1, 1)
        self.frozen.requires_grad_(False)


def test_rule_on_toy_model():
    decay, no_decay = split_decay(Toy())
    assert decay == ["cls_head.weight", "conv.weight", "fc.weight"]
    assert no_decay == ["cls_head.bias", "conv.bias", "fc.bias", "gain.scale", "ln.bias", "ln.weight",
                        "norm.bias", "norm.weight"]


def test_four_groups_and_sgd_on_toy_model():
    opt = make_optimizer(Toy(), {"type": "SGD", "learning_rate": 0.1, "weight_decay": 0.05,
                                 "momentum": 0.8, "backbone_lr_weight": 0.5}, head_lr_groups=True)
    assert isinstance(opt, torch.optim.SGD)
    names = [g["param_names"] for g in opt.param_groups]
    assert names[0] == ["cls_head.weight"] and names[1] == ["cls_head.bias"]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, 0.05, 0.05]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.05, 0.0]
    assert opt.param_groups[0]["momentum"] == 0.8


def test_unknown_type_is_a_config_error():
    with pytest.raises(ConfigError, match="opt.type"):
        make_optimizer(Toy(), {"type": "Adam", "learning_rate": 1.0})


@pytest.mark.parametrize("variant", ["two_groups", "four_groups_backbone_lr_weight_0.1"])
def test_groups_match_reference_on_tiny_model(variant):
    with open(fixture_path("golden", "schedule", "schedule.json")) as f:
        golden = json.load(f)
    with open(fixture_path("golden", "tiny_model", "config.json")) as f:
        cfg = json.load(f)
    models = pytest.importorskip("libs.modeling.models")
    model = models.make_meta_arch(cfg["model_name"], **cfg["model"])
    var = golden["variants"][variant]
    opt_cfg = dict(golden["opt"], backbone_lr_weight=var["backbone_lr_weight"])
    optimizer = make_optimizer(model, opt_cfg, head_lr_groups=bool(var["make_optimizer_kwargs"]))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert len(optimizer.param_groups) == len(var["groups"])
    params = dict(model.named_parameters())
    for group, ref in zip(optimizer.param_groups, var["groups"]):
        assert group["param_names"] == ref["param_names"]
        assert all(p is params[n] for p, n in zip(group["params"], ref["param_names"]))
        assert group["weight_decay"] == ref["weight_decay"]
        assert group["lr"] == pytest.approx(ref["lr_base"], rel=1e-15)
        assert list(group["betas"]) == ref["betas"] and group["eps"] == ref["eps"]
        assert group["amsgrad"] == ref["amsgrad"]


def test_fused_adamw_is_opt_in_and_matches_the_default_loop():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = {"type": "AdamW", "learning_rate": 1e-2, "weight_decay": 0.05}
    plain, fused = make_optimizer(models[0], cfg), make_optimizer(models[1], {**cfg, "fused": True})
    assert not plain.defaults.get("fused") and fused.defaults["fused"] is True
    x = torch.randn(4, 8)
    for model, optimizer in zip(models, (plain, fused)):
        for _ in range(3):
            optimizer.zero_grad()
            model(x).square().sum().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
