"""Hooks: everything around the training loop that is not the step itself.

Register them in this order (``train.py`` does): ``IterationTimer``, ``LRScheduler``, ``EMAHook``,
``ProgressBar``, ``PeriodicCheckpointer``, ``EvalHook``, ``PeriodicWriter``, ``TrainingCurves``,
``SnapshotHook``. The snapshot hook comes last so a snapshot captures the state after every other
hook ran; ``TrainingCurves`` comes after the writers so the metrics file it plots is complete.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from libs.core.errors import GroundNLQError
from libs.engine.checkpoint import BEST_CHECKPOINT, Checkpointer
from libs.engine.trainer import HookBase
from libs.utils import comm
from libs.utils.events import EventWriter

logger = logging.getLogger("groundnlq")


class IterationTimer(HookBase):
    """Puts ``time``: seconds of each step (data, forward, backward, optimizer and step hooks)."""

    def __init__(self) -> None:
        self._start = 0.0

    def before_step(self) -> None:
        self._start = time.perf_counter()

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("time", time.perf_counter() - self._start, smoothing_hint=False)


class LRScheduler(HookBase):
    """Puts ``lr`` (group 0's lr used by this step), then advances the schedule by one step."""

    def after_step(self) -> None:
        self.trainer.storage.put_scalar("lr", self.trainer.optimizer.param_groups[0]["lr"], smoothing_hint=False)
        self.trainer.scheduler.step()


class EMAHook(HookBase):
    """Moves the EMA weights towards the model after every step that updated it."""

    def after_step(self) -> None:
        if self.trainer.ema is not None and not self.trainer.step_skipped:
            self.trainer.ema.update(self.trainer.model)


class ProgressBar(HookBase):
    """A tqdm bar per epoch on rank 0 showing loss, lr and the epoch's ETA (off when not a TTY)."""

    def __init__(self) -> None:
        self._bar = None

    def before_epoch(self) -> None:
        if not comm.is_main_process():
            return
        from tqdm import tqdm

        self._bar = tqdm(total=self.trainer.iters_per_epoch, initial=self.trainer.inner_iter,
                         desc=f"epoch {self.trainer.epoch}", dynamic_ncols=True, disable=None, leave=False)

    def after_step(self) -> None:
        if self._bar is None:
            return
        latest = self.trainer.storage.latest()
        postfix = {}
        if "final_loss" in latest:
            postfix["loss"] = f"{latest['final_loss'][0]:.4f}"
        if "lr" in latest:
            postfix["lr"] = f"{latest['lr'][0]:.2e}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def after_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    after_train = after_epoch


class PeriodicCheckpointer(HookBase):
    """Rank 0 saves ``epoch_XXX.pth.tar`` every ``period`` epochs and after the last epoch."""

    def __init__(self, checkpointer: Checkpointer, period: int = 1) -> None:
        self.checkpointer = checkpointer
        self.period = period

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch
        last = epoch + 1 == self.trainer.max_epochs
        if self.period > 0 and ((epoch + 1) % self.period == 0 or last) and comm.is_main_process():
            path = self.checkpointer.save_epoch_checkpoint(epoch, self.trainer.checkpoint_state())
            logger.info(f"saved checkpoint {path}")


class EvalHook(HookBase):
    """Every ``period`` epochs (and after the last): ``eval_function()`` -> metrics on every rank.

    Rank 0 puts ``val/<metric>`` scalars, appends a line to ``eval_results.jsonl`` and saves
    ``model_best.pth.tar`` when the metrics beat the best so far, compared by ``best_keys`` in
    order (R1@0.5, then R5@0.5). The summary of the best epoch is logged at the end.
    """

    def __init__(
        self,
        period: int,
        eval_function: Callable[[], Dict[str, float]],
        checkpointer: Optional[Checkpointer] = None,
        results_file: Optional[str] = None,
        best_keys: Sequence[str] = ("R1@0.5", "R5@0.5"),
        model_label: str = "raw",
    ) -> None:
        self.period = period
        self.eval_function = eval_function
        self.checkpointer = checkpointer
        self.results_file = results_file
        self.best_keys = tuple(best_keys)
        self.model_label = model_label
        self.best: Optional[Dict[str, Any]] = None  # {"epoch": e, "metrics": {...}}

    def _key(self, metrics: Dict[str, float]) -> tuple:
        return tuple(float(metrics.get(k, -math.inf)) for k in self.best_keys)

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch
        last = epoch + 1 == self.trainer.max_epochs
        if self.period <= 0 or not ((epoch + 1) % self.period == 0 or last):
            return
        metrics = self.eval_function()
        self.trainer.model.train()
        if not comm.is_main_process() or not metrics:
            return
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self.trainer.storage.put_scalar(f"val/{name}", value, smoothing_hint=False)
        record = {"epoch": epoch, "iteration": self.trainer.iter, "model": self.model_label, **metrics}
        if self.results_file:
            with open(self.results_file, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        shown = "  ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
        logger.info(f"Evaluation after epoch {epoch} ({self.model_label} weights): {shown}")
        if self.best is None or self._key(metrics) > self._key(self.best["metrics"]):
            self.best = {"epoch": epoch, "metrics": dict(metrics)}
            if self.checkpointer is not None:
                state = self.trainer.checkpoint_state()
                state["metrics"] = dict(metrics)
                path = self.checkpointer.save_checkpoint(BEST_CHECKPOINT, state)
                logger.info(f"new best {self.best_keys[0]} = {metrics.get(self.best_keys[0])}: saved {path}")

    def after_train(self) -> None:
        if self.best is not None and comm.is_main_process():
            shown = "  ".join(f"{k} {v:.2f}" for k, v in self.best["metrics"].items() if isinstance(v, float))
            title = "Final evaluation summary" if self.trainer.stopped_by is None else "Evaluation summary so far"
            logger.info(f"{title}: best epoch {self.best['epoch']} by {'/'.join(self.best_keys)}: {shown}")

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best} if self.best is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = state.get("best")


class PeriodicWriter(HookBase):
    """Calls every writer each ``period`` steps, at the end of each epoch and of training."""

    def __init__(self, writers: List[EventWriter], period: int = 100) -> None:
        self.writers = writers
        self.period = period

    def _write(self) -> None:
        for writer in self.writers:
            writer.write()

    def after_step(self) -> None:
        if self.period > 0 and (self.trainer.inner_iter + 1) % self.period == 0:
            self._write()

    def after_epoch(self) -> None:
        self._write()

    def after_train(self) -> None:
        for writer in self.writers:
            writer.close()


class TrainingCurves(HookBase):
    """At the end of training, rank 0 draws the run's loss, lr and recall curves
    (``training_curves.png`` beside the TensorBoard events); without matplotlib it only warns."""

    def __init__(self, run_folder: str) -> None:
        self.run_folder = run_folder

    def after_train(self) -> None:
        if not comm.is_main_process():
            return
        from libs.utils.training_plots import plot_training_curves

        try:
            logger.info(f"training curves: {plot_training_curves(self.run_folder)}")
        except GroundNLQError as err:
            logger.warning(f"no training curves: {err}")


class SnapshotHook(HookBase):
    """A resumable snapshot every ``period`` steps (0 = never mid-epoch), at each epoch end, and
    before training stops on non-finite losses. Runs on every rank (the RNG states are gathered);
    rank 0 writes."""

    def __init__(self, checkpointer: Checkpointer, period: int = 500) -> None:
        self.checkpointer = checkpointer
        self.period = period

    def _save(self, epoch_done: bool) -> None:
        state = self.trainer.state_dict(epoch_done=epoch_done)
        if comm.is_main_process():
            self.checkpointer.save_snapshot(state)

    def after_step(self) -> None:
        trainer = self.trainer
        periodic = self.period > 0 and (trainer.iter + 1) % self.period == 0
        if periodic or trainer.stop_message:
            self._save(epoch_done=False)

    def after_epoch(self) -> None:
        self._save(epoch_done=True)
