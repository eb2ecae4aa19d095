"""Optimizer construction with the reference's weight-decay rule and parameter-group order.

Rule (ActionFormer/GroundNLQ ``make_optimizer``), per parameter, by the module that owns it:

* names ending in ``bias`` -> no decay
* ``weight`` of a linear or convolution layer -> decay
* ``weight`` of a normalisation layer (LayerNorm, GroupNorm, the channel-first LayerNorm) -> no decay
* ``scale`` (Scale, AffineDropPath / LayerScale) and ``rel_pe`` -> no decay

A parameter the rule does not name (the reference would assert) decays when it is a matrix
(ndim >= 2) and does not otherwise, so new layer types never stop training.

Groups hold parameters sorted by name: ``[decay, no_decay]``; with ``head_lr_groups`` (the finetune
script's optional form) ``[head decay, head no-decay, backbone decay, backbone no-decay]`` where a
"head" parameter has ``head`` in its name and the others get ``lr * backbone_lr_weight``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from libs.core.errors import ConfigError

_DECAY_MODULES: Tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)
_NO_DECAY_MODULES: Tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
_NO_DECAY_NAMES = ("scale", "rel_pe")


def _is_norm_module(module: nn.Module) -> bool:
    return isinstance(module, _NO_DECAY_MODULES) or type(module).__name__.endswith("Norm")


def split_decay(model: nn.Module) -> Tuple[List[str], List[str]]:
    """Names of trainable parameters with and without weight decay, each sorted."""
    decay, no_decay = set(), set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name.endswith("bias") or param_name in _NO_DECAY_NAMES:
                no_decay.add(full)
            elif param_name.endswith("weight") and isinstance(module, _DECAY_MODULES):
                decay.add(full)
            elif param_name.endswith("weight") and _is_norm_module(module):
                no_decay.add(full)
            elif param.ndim >= 2:
                decay.add(full)
            else:
                no_decay.add(full)
    return sorted(decay), sorted(no_decay)


def make_param_groups(
    model: nn.Module, opt_cfg: Dict[str, Any], head_lr_groups: bool = False
) -> List[Dict[str, Any]]:
    """Parameter groups in the reference's order; ``params`` are ``(name, tensor)`` pairs, which
    torch keeps as the group's ``param_names``."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    lr = float(opt_cfg["learning_rate"])
    wd = float(opt_cfg.get("weight_decay", 0.0))

    def group(names: List[str], weight_decay: float, group_lr: float) -> Dict[str, Any]:
        return {"params": [(n, params[n]) for n in names], "weight_decay": weight_decay,
                "lr": group_lr, "initial_lr": group_lr}

    if not head_lr_groups:
        return [group(decay, wd, lr), group(no_decay, 0.0, lr)]
    backbone_lr = lr * float(opt_cfg.get("backbone_lr_weight", 1.0))
    is_head = lambda name: "head" in name  # noqa: E731  (the reference's test)
    return [
        group([n for n in decay if is_head(n)], wd, lr),
        group([n for n in no_decay if is_head(n)], 0.0, lr),
        group([n for n in decay if not is_head(n)], wd, backbone_lr),
        group([n for n in no_decay if not is_head(n)], 0.0, backbone_lr),
    ]


def make_optimizer(
    model: nn.Module, opt_cfg: Dict[str, Any], head_lr_groups: bool = False
) -> torch.optim.Optimizer:
    """AdamW (default betas/eps) or SGD (``momentum``) over ``make_param_groups``.

    ``model`` is the bare model (not a DDP wrapper) so that names carry no ``module.`` prefix.
    Each group keeps its ``param_names`` (for logs, tests and checking a resumed optimizer) and
    ``initial_lr`` (the base lr of the schedule).
    """
    groups = make_param_groups(model, opt_cfg, head_lr_groups)
    kind = opt_cfg.get("type", "AdamW")
    lr = float(opt_cfg["learning_rate"])
    if kind == "AdamW":
        return torch.optim.AdamW(groups, lr=lr, fused=True if opt_cfg.get("fused") else None)
    if kind == "SGD":
        return torch.optim.SGD(groups, lr=lr, momentum=float(opt_cfg.get("momentum", 0.9)))
    raise ConfigError(f"opt.type: expected 'AdamW' or 'SGD', got {kind!r}")
