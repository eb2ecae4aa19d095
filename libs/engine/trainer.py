"""The training loop (Detectron2's ``TrainerBase``/``SimpleTrainer`` shape).

The loop only knows that training runs over epochs of optimizer steps; the learning-rate schedule,
EMA, checkpoints, snapshots, evaluation, timing and logging are hooks (``libs/engine/hooks.py``).
``SimpleTrainer.run_step`` is one optimizer step: ``grad_accum_steps`` micro-batches of forward
(under autocast when AMP is on, CUDA only) and backward, gradient clipping, the step itself.

Differences from the reference, on purpose:

* one ``DistributedDataParallel`` wrapper for the whole run (the reference made a new one every
  epoch), ``find_unused_parameters`` off unless asked for (every parameter gets a gradient);
* the loss normaliser's positive count is averaged over ranks before each update, so all ranks
  divide by the same value (the reference's per-GPU normaliser was unsynchronised);
* a step whose loss or gradient is not finite is skipped with a warning naming the batch's query
  ids; after ``max_nonfinite_steps`` such steps in a row training stops (a snapshot is saved first);
* mid-epoch resume: the epoch's batch order is a function of the seed and epoch, the batches
  already done are skipped without loading them, and RNG states are restored at the point they
  were captured, so a resumed CPU run is bit-identical to an uninterrupted one (with
  ``num_workers`` 0; with workers, per-worker augmentation RNG streams restart).
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from libs.core.errors import CheckpointError, ConfigError, GroundNLQError
from libs.datasets.datasets import set_loader_epoch
from libs.engine.checkpoint import load_checkpoint
from libs.engine.rng_state import capture_rng_state, restore_rng_state
from libs.utils import comm
from libs.utils.amp import autocast, check_amp
from libs.utils.ema import ModelEMA
from libs.utils.events import EventStorage

logger = logging.getLogger("groundnlq")



class NonFiniteLossError(GroundNLQError):
    """Training produced too many non-finite steps in a row and was stopped."""


def fix_random_seed(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) as the reference's ``fix_random_seed``.

    ``deterministic`` (``trainer.deterministic``) selects deterministic cuDNN/cuBLAS kernels
    (warn-only where none exists); False lets cuDNN benchmark and pick the fastest ones. Returns a
    fresh generator seeded with ``seed``, for the training loader's shuffling and worker seeds (the
    reference returned the global one).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.benchmark = not deterministic  # the fastest kernels, picked per shape
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_per_rank(seed: int, rank: int, generator: torch.Generator) -> None:
    """Once the weights are built (identical on every rank), give each rank its own random
    streams: rank ``r > 0`` reseeds Python, NumPy, torch and the loader's ``generator`` (its
    workers' seeds) with ``seed + r``, so N processes draw N different crops, jitters and drop-path
    masks instead of one (Detectron2's rule). Rank 0 keeps its streams: a one-process run is
    unchanged."""
    if rank == 0:
        return
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)
    torch.cuda.manual_seed_all(seed + rank)
    generator.manual_seed(seed + rank)


def query_ids_of(batch: Any) -> List[str]:
    """The query ids in a batch (a ``Batch`` with ``meta`` or the reference's list of item dicts)."""
    if hasattr(batch, "meta"):
        return [str(m.get("query_id", "?")) for m in batch.meta]
    if isinstance(batch, (list, tuple)):
        return [str(item.get("query_id", "?")) for item in batch if isinstance(item, dict)]
    return []


def steps_in_epoch(loader: DataLoader, epoch: int, grad_accum_steps: int = 1) -> int:
    """Optimizer steps in ``epoch`` (the video-centric sampler's batch count varies a little)."""
    set_loader_epoch(loader, epoch)
    return len(loader) // grad_accum_steps


SNAPSHOT_KEYS = ("progress", "model", "optimizer", "scheduler", "rng")


def _require_keys(state: Dict[str, Any], keys: Sequence[str], source: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{source}: not a resumable file of this trainer (missing {missing})")


class HookBase:
    """Called by the trainer around the loop; ``self.trainer`` is set on registration.

    A hook with state that must survive a resume returns it from ``state_dict``.
    """

    trainer: "TrainerBase"

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_epoch(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None: ...


class TrainerBase:
    """Epochs x steps with hooks. Counters, during a step: ``epoch``; ``iter`` (global step index,
    0-based); ``inner_iter`` (step index within the epoch). Both advance after ``after_step``."""

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.epoch = 0
        self.iter = 0
        self.inner_iter = 0
        self.start_epoch = 0
        self.max_epochs = 0
        self.iters_per_epoch = 0
        self.storage: Optional[EventStorage] = None
        self.stop_message: Optional[str] = None  # set by run_step to stop after the current step
        self.stopped_by: Optional[BaseException] = None  # what ended training early, if anything did

    def register_hooks(self, hooks: Sequence[Optional[HookBase]]) -> None:
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self._hooks.append(hook)

    @property
    def hooks(self) -> List[HookBase]:
        return list(self._hooks)

    def train(self, start_epoch: int, max_epochs: int) -> None:
        """Run epochs ``start_epoch .. max_epochs-1``; the first one starts at ``self.inner_iter``."""
        self.start_epoch, self.max_epochs = start_epoch, max_epochs
        logger.info(f"Starting training from epoch {start_epoch} (step {self.iter}) to epoch {max_epochs - 1}")
        with EventStorage(self.iter) as self.storage:
            self._call("before_train")
            self.stopped_by = None
            try:
                for self.epoch in range(start_epoch, max_epochs):
                    self.begin_epoch()
                    self._call("before_epoch")
                    while self.inner_iter < self.iters_per_epoch:
                        self.storage.iter = self.iter
                        self._call("before_step")
                        self.run_step()
                        self._call("after_step")
                        self.iter += 1
                        self.inner_iter += 1
                        if self.stop_message:
                            raise NonFiniteLossError(self.stop_message)
                    self._call("after_epoch")
                    self.inner_iter = 0
            except BaseException as exc:
                self.stopped_by = exc
                raise
            finally:
                try:
                    self._call("after_train")
                finally:  # even if a hook fails too (or a second signal comes): the log's last
                    if self.stopped_by is not None:  # line says the run did not finish, and why
                        reason = f"{type(self.stopped_by).__name__}: {self.stopped_by}".strip().rstrip(":")
                        logger.error(f"training stopped at epoch {self.epoch} step {self.iter}: "
                                     f"{reason.splitlines()[0]}")

    def begin_epoch(self) -> None:
        """Prepare the epoch's data (``iters_per_epoch`` and the batch iterator)."""

    def run_step(self) -> None:
        raise NotImplementedError

    def _call(self, name: str) -> None:
        for hook in self._hooks:
            getattr(hook, name)()


class SimpleTrainer(TrainerBase):
    """One optimizer step per ``run_step`` over ``grad_accum_steps`` consecutive loader batches.

    ``model`` is the bare model (its ``state_dict`` has no ``module.`` prefix); in a multi-process
    run it is wrapped once in ``DistributedDataParallel`` for the forward/backward. The loader
    yields ``Batch`` objects (moved to ``device`` here); ``model(batch)`` returns the loss dict.
    ``criterion``: the training state besides the weights (the model's ``Criterion``: its
    ``state_dict`` goes into checkpoints; in a multi-process run its ``reduce_count`` is set to
    the mean over processes, so every process divides its losses by the same normaliser). All
    ranks run the same number of forwards (equal batch counts), so that collective always matches.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: DataLoader,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        device: torch.device = torch.device("cpu"),
        ema: Optional[ModelEMA] = None,
        grad_accum_steps: int = 1,
        clip_grad_l2norm: float = -1.0,
        amp: str = "none",
        max_nonfinite_steps: int = 5,
        loader_generator: Optional[torch.Generator] = None,
        find_unused_parameters: bool = False,
        config: Optional[Dict[str, Any]] = None,
        criterion: Optional[Any] = None,
    ) -> None:
        super().__init__()
        if grad_accum_steps < 1:
            raise ConfigError(f"trainer.grad_accum_steps must be >= 1, got {grad_accum_steps}")
        amp = check_amp(amp, "trainer.amp")
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.device = torch.device(device)
        self.ema = ema
        self.grad_accum_steps = int(grad_accum_steps)
        self.clip_grad_l2norm = float(clip_grad_l2norm)
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.loader_generator = loader_generator
        self.config = config
        self.criterion = criterion
        # AMP only on CUDA; on the CPU training runs in float32 whatever the config says
        self.amp = amp if self.device.type == "cuda" else None
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.train_model: nn.Module = model
        if comm.get_world_size() > 1:
            if criterion is not None:
                criterion.reduce_count = comm.all_reduce_mean
            self.train_model = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters,
            )
        self.step_skipped = False
        self.nonfinite_in_a_row = 0
        self._data_iter: Optional[Iterator[Any]] = None
        self._pending_rng: Optional[Dict[str, Any]] = None
        self.iters_per_epoch = self.count_iters_per_epoch(0)

    # ------------------------------------------------------------------ data
    def count_iters_per_epoch(self, epoch: int) -> int:
        return steps_in_epoch(self.data_loader, epoch, self.grad_accum_steps)

    def begin_epoch(self) -> None:
        """Reshuffle for the epoch and open its batch iterator, skipping the batches already done.

        RNG states restored from a snapshot are applied exactly where they were captured: before
        the iterator is made at an epoch boundary, after it in the middle of an epoch.
        """
        self.iters_per_epoch = self.count_iters_per_epoch(self.epoch)
        skip = self.inner_iter * self.grad_accum_steps
        if self._pending_rng is not None and skip == 0:
            self._restore_rng(self._pending_rng)
            self._pending_rng = None
        set_loader_epoch(self.data_loader, self.epoch, start_batch=skip)  # skipped batches are not loaded
        self._data_iter = iter(self.data_loader)
        if self._pending_rng is not None:
            self._restore_rng(self._pending_rng)
            self._pending_rng = None
        self.model.train()

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp)

    def run_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        sums: Dict[str, float] = {}
        bad_ids: List[str] = []
        data_time = 0.0
        for micro in range(self.grad_accum_steps):
            start = time.perf_counter()
            batch = next(self._data_iter)
            if self.device.type != "cpu":
                batch = batch.to(self.device, non_blocking=True)
            data_time += time.perf_counter() - start
            last = micro == self.grad_accum_steps - 1
            no_sync = getattr(self.train_model, "no_sync", None)
            sync_ctx = no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()
            with sync_ctx:
                with self._autocast():
                    losses = self.train_model(batch)
                loss = losses["final_loss"]
                if not torch.isfinite(loss.detach()):
                    bad_ids.extend(query_ids_of(batch))
                if self.grad_accum_steps > 1:
                    loss = loss / self.grad_accum_steps
                (self.grad_scaler.scale(loss) if self.grad_scaler else loss).backward()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach()) / self.grad_accum_steps

        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        grad_norm = self._clip_or_measure_gradients()
        # fp16: overflowing gradients are the scaler's normal business, not a failure
        grad_ok = bool(torch.isfinite(grad_norm)) or self.grad_scaler is not None
        ok = not bad_ids and grad_ok
        if comm.get_world_size() > 1:  # every rank must take the same decision
            ok = comm.all_reduce_mean(torch.tensor(0.0 if ok else 1.0, device=self.device)).item() == 0.0
        self.step_skipped = not ok
        if ok:
            if self.grad_scaler is not None:
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            if self.grad_scaler is not None:
                self.grad_scaler.update()
            self._on_nonfinite(bad_ids, grad_norm)

        if comm.get_world_size() > 1:  # the logs show the step's loss over every process's batch
            names = sorted(sums)
            means = comm.all_reduce_mean(torch.tensor([sums[n] for n in names], dtype=torch.float64))
            sums = dict(zip(names, means.tolist()))
        self.storage.put_scalars(**sums)
        self.storage.put_scalars(
            smoothing_hint=False, epoch=self.epoch, epoch_iter=self.inner_iter + 1,
            grad_norm=float(grad_norm), data_time=data_time,
        )

    def _clip_or_measure_gradients(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return torch.tensor(0.0)
        if self.clip_grad_l2norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, self.clip_grad_l2norm)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def _on_nonfinite(self, bad_ids: List[str], grad_norm: torch.Tensor) -> None:
        self.nonfinite_in_a_row += 1
        where = f"loss of queries {bad_ids[:10]}" if bad_ids else f"gradient norm ({float(grad_norm)})"
        if not bad_ids and comm.get_world_size() > 1:
            where += " or another rank's loss"
        logger.warning(
            f"epoch {self.epoch} step {self.iter}: non-finite {where}; step skipped "
            f"({self.nonfinite_in_a_row} in a row)"
        )
        if 0 < self.max_nonfinite_steps <= self.nonfinite_in_a_row:
            self.stop_message = (
                f"training stopped at epoch {self.epoch} step {self.iter}: {self.nonfinite_in_a_row} "
                f"non-finite steps in a row (trainer.max_nonfinite_steps = {self.max_nonfinite_steps}); "
                "the last snapshot holds the weights before them; lower opt.learning_rate or check "
                "the data of the queries named above, then resume"
            )

    # ------------------------------------------------------------------ state
    def checkpoint_state(self) -> Dict[str, Any]:
        """An epoch checkpoint in the reference's format (``epoch`` = finished 0-based epoch) plus
        the loss normaliser and the config."""
        state = {
            "epoch": self.epoch,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state_dict_ema": self.ema.state_dict() if self.ema is not None else None,
        }
        if self.criterion is not None:
            state["loss_normalizer"] = self.criterion.state_dict()
        if self.config is not None:
            state["config"] = self.config
        return state

    def state_dict(self, epoch_done: bool) -> Dict[str, Any]:
        """Everything needed to continue; collective (gathers every rank's RNG state).

        ``epoch_done``: taken after the epoch's last hooks, so resume starts the next epoch.
        Otherwise taken after the current step's hooks.
        """
        if epoch_done:
            progress = {"epoch": self.epoch + 1, "inner_iter": 0, "iter": self.iter}
        else:
            progress = {"epoch": self.epoch, "inner_iter": self.inner_iter + 1, "iter": self.iter + 1}
        progress["iters_per_epoch"] = self.iters_per_epoch
        progress["grad_accum_steps"] = self.grad_accum_steps
        progress["world_size"] = comm.get_world_size()
        return {
            "progress": progress,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "loss_normalizer": self.criterion.state_dict() if self.criterion is not None else None,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "hooks": {type(h).__name__: h.state_dict() for h in self._hooks if h.state_dict()},
            "rng": comm.all_gather_object(capture_rng_state(self.loader_generator)),
            "config": self.config,
        }

    def load_state_dict(self, state: Dict[str, Any], source: str = "snapshot") -> int:
        """Restore a snapshot; returns the epoch to start at (``train(start_epoch=...)``)."""
        _require_keys(state, SNAPSHOT_KEYS, source)
        progress = state["progress"]
        world_size = comm.get_world_size()
        if progress.get("world_size", 1) != world_size:
            raise CheckpointError(
                f"{source} was written by a run with {progress['world_size']} processes; resume it with "
                f"the same number (this run has {world_size}), or start from its weights with --pretrained"
            )
        if progress.get("grad_accum_steps", 1) != self.grad_accum_steps:
            raise CheckpointError(
                f"{source} was written with trainer.grad_accum_steps = {progress['grad_accum_steps']}, "
                f"this run uses {self.grad_accum_steps}"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{source} does not fit this model/optimizer: {exc}") from exc
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if self.grad_scaler is not None and state.get("grad_scaler") is not None:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self._load_criterion(state)
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        hook_states = state.get("hooks", {})
        for hook in self._hooks:
            if type(hook).__name__ in hook_states:
                hook.load_state_dict(hook_states[type(hook).__name__])
        rng = state["rng"]
        self._pending_rng = rng[comm.get_rank()]
        self.iter = int(progress["iter"])
        self.inner_iter = int(progress["inner_iter"])
        return int(progress["epoch"])

    def load_checkpoint_state(self, state: Dict[str, Any], source: str = "checkpoint") -> int:
        """Resume from an epoch checkpoint (the reference's way): weights, EMA, optimizer and
        schedule; data order and RNG start afresh. Returns the epoch to start at (``epoch + 1``)."""
        _require_keys(state, ("epoch", "state_dict"), source)
        load_checkpoint(self.model, state, strict=True)
        if self.ema is not None and state.get("state_dict_ema") is not None:
            load_checkpoint(self.ema.module, state, use_ema=True, strict=True)
        if state.get("optimizer") is not None:
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{source}: optimizer state does not fit this model: {exc}") from exc
        start_epoch = int(state["epoch"]) + 1
        self.iter = sum(self.count_iters_per_epoch(e) for e in range(start_epoch))
        scheduler_state = state.get("scheduler")
        if isinstance(scheduler_state, dict) and "last_step" in scheduler_state:
            self.scheduler.load_state_dict(scheduler_state)
        else:  # the reference's scheduler object: recompute the position
            self.scheduler.load_state_dict({"last_step": self.iter})
        self._load_criterion(state)
        self.inner_iter = 0
        return start_epoch

    def _load_criterion(self, state: Dict[str, Any]) -> None:
        if self.criterion is not None and state.get("loss_normalizer") is not None:
            self.criterion.load_state_dict(state["loss_normalizer"])

    def _restore_rng(self, state: Dict[str, Any]) -> None:
        restore_rng_state(state, self.loader_generator)
