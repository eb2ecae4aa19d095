"""ModelEMA arithmetic: ema = d * ema + (1 - d) * model over float entries; others copied."""

import torch
from torch import nn

from libs.utils.ema import ModelEMA


class WithBuffers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("running", torch.zeros(2))


def test_one_update_by_hand():
    model = WithBuffers()
    with torch.no_grad():
        model.fc.weight.fill_(1.0)
        model.fc.bias.fill_(0.0)
    ema = ModelEMA(model, decay=0.75)
    with torch.no_grad():
        model.fc.weight.fill_(3.0)
        model.fc.bias.fill_(-2.0)
        model.running.fill_(4.0)
        model.count.fill_(7)
    ema.update(model)
    state = ema.state_dict()
    assert torch.equal(state["fc.weight"], torch.full((2, 2), 0.75 * 1 + 0.25 * 3))  # 1.5
    assert torch.equal(state["fc.bias"], torch.full((2,), -0.5))
    assert torch.equal(state["running"], torch.full((2,), 1.0))
    assert state["count"].item() == 7 and state["count"].dtype == torch.int64
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_bitwise_equal_to_reference_expression():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7))
    ema = ModelEMA(model, decay=0.999)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        reference = {k: 0.999 * reference[k] + (1.0 - 0.999) * v for k, v in model.state_dict().items()}
    for key, value in ema.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_state_dict_round_trip_and_set():
    model = nn.Linear(3, 1)
    ema = ModelEMA(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    other = ModelEMA(nn.Linear(3, 1))
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module.weight, ema.module.weight)
    other.set(model)
    assert torch.equal(other.module.weight, model.weight)
    assert other.module.weight.data_ptr() != model.weight.data_ptr()
