"""Exponential moving average of a model's weights (the reference's ``ModelEma``).

After every optimizer step, for every floating-point ``state_dict`` entry,
``ema = decay * ema + (1 - decay) * model`` (the reference's expression, same rounding); other
entries (integer buffers such as counters) are copied. The averaged copy is kept in eval mode and
never receives gradients.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

import torch
from torch import nn


class ModelEMA:
    """Holds ``self.module``, a deep copy of the model whose weights track the running average."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def _pairs(self, model: nn.Module) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[Tuple]]:
        ema_state = self.module.state_dict()
        model_state = model.state_dict()
        floats_e, floats_m, others = [], [], []
        for key, ema_v in ema_state.items():
            model_v = model_state[key]
            if ema_v.is_floating_point():
                floats_e.append(ema_v)
                floats_m.append(model_v.detach())
            else:
                others.append((ema_v, model_v))
        return floats_e, floats_m, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model`` (the bare model, not a DDP wrapper)."""
        floats_e, floats_m, others = self._pairs(model)
        if floats_e:
            # d * ema + (1 - d) * model, each product rounded, then the sum (as the reference)
            torch._foreach_mul_(floats_e, self.decay)
            torch._foreach_add_(floats_e, torch._foreach_mul(floats_m, 1.0 - self.decay))
        for ema_v, model_v in others:
            ema_v.copy_(model_v)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy the model's weights (e.g. after loading pretrained weights for finetuning)."""
        self.module.load_state_dict(model.state_dict())

    def state_dict(self) -> Dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, Any], strict: bool = True) -> Any:
        return self.module.load_state_dict(state, strict=strict)
