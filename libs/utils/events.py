"""Training events: code *puts* scalars into an ``EventStorage``; writers read it (Detectron2-style).

* ``EventStorage``: per-name ``HistoryBuffer`` of ``(value, iteration)``; the current one is
  reachable with ``get_event_storage()`` inside ``with EventStorage(...)``.
* Writers: ``ConsoleWriter`` (one log line), ``JSONWriter`` (``metrics.jsonl``, one JSON object per
  write), ``TensorboardWriter`` (``SummaryWriter`` scalars). Only rank 0 creates writers.
* ``setup_logging``: the ``groundnlq`` logger, printing to the console and to ``train.log``.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import os
import sys
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

import numpy as np

LOGGER_NAME = "groundnlq"
_CURRENT_STORAGE: List["EventStorage"] = []


def setup_logging(output_dir: Optional[str] = None, rank: int = 0, filename: str = "train.log") -> logging.Logger:
    """Configure the ``groundnlq`` logger once: console on every rank (warnings only off rank 0),
    plus ``<output_dir>/<filename>`` on rank 0 holding every console line."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    close_logging()
    fmt = logging.Formatter("[%(asctime)s %(levelname)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank > 0:
        fmt = logging.Formatter(f"[%(asctime)s %(levelname)s rank {rank}] %(message)s", datefmt="%m/%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(console)
    if output_dir is not None and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), mode="a")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def close_logging() -> None:
    """Detach and close the ``groundnlq`` logger's handlers (its log file, before a folder is removed)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


class HistoryBuffer:
    """The recent values of one scalar, with the iteration each was recorded at."""

    def __init__(self, max_length: int = 10000) -> None:
        self._data: Deque[Tuple[float, int]] = collections.deque(maxlen=max_length)
        self._count = 0
        self._sum = 0.0

    def update(self, value: float, iteration: int) -> None:
        self._data.append((value, iteration))
        self._count += 1
        self._sum += value

    def latest(self) -> float:
        return self._data[-1][0]

    def median(self, window: int) -> float:
        return float(np.median([v for v, _ in list(self._data)[-window:]]))

    def avg(self, window: int) -> float:
        return float(np.mean([v for v, _ in list(self._data)[-window:]]))

    def global_avg(self) -> float:
        return self._sum / max(self._count, 1)

    def values(self) -> List[Tuple[float, int]]:
        return list(self._data)


class EventStorage:
    """Scalars put by training code, keyed by name; ``iter`` is the step they belong to."""

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._history: Dict[str, HistoryBuffer] = collections.defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest: Dict[str, Tuple[float, int]] = {}

    def put_scalar(self, name: str, value: Any, smoothing_hint: bool = True) -> None:
        """Record ``value`` (a number or 0-d tensor) for the current iteration.

        ``smoothing_hint``: writers may show a window average (losses) instead of the latest value.
        """
        value = float(value)
        self._history[name].update(value, self.iter)
        self._latest[name] = (value, self.iter)
        self._smoothing_hints.setdefault(name, smoothing_hint)

    def put_scalars(self, smoothing_hint: bool = True, **kwargs: Any) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._history:
            raise KeyError(f"no history for {name!r}; recorded: {sorted(self._history)}")
        return self._history[name]

    def histories(self) -> Dict[str, HistoryBuffer]:
        return dict(self._history)

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``{name: (latest value, iteration)}``."""
        return dict(self._latest)

    def latest_with_smoothing_hint(self, window: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like ``latest`` but the window median for names recorded with ``smoothing_hint``."""
        out = {}
        for name, (value, it) in self._latest.items():
            smooth = self._smoothing_hints[name]
            out[name] = (self._history[name].median(window) if smooth else value, it)
        return out

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert _CURRENT_STORAGE[-1] is self  # internal invariant, not user input
        _CURRENT_STORAGE.pop()


def get_event_storage() -> EventStorage:
    """The storage of the innermost ``with EventStorage()`` block."""
    if not _CURRENT_STORAGE:
        raise RuntimeError("get_event_storage() called outside 'with EventStorage(...)'")
    return _CURRENT_STORAGE[-1]


class EventWriter:
    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _unwritten(last_written: Dict[str, int], window: int) -> Dict[int, Dict[str, float]]:
    """Scalars recorded since a writer last wrote each name, grouped by iteration (marks them written)."""
    by_iter: Dict[int, Dict[str, float]] = collections.defaultdict(dict)
    for name, (value, it) in get_event_storage().latest_with_smoothing_hint(window).items():
        if it > last_written.get(name, -1):
            by_iter[it][name] = value
            last_written[name] = it
    return by_iter


class JSONWriter(EventWriter):
    """Appends the scalars recorded since the last write, one JSON object per iteration."""

    def __init__(self, path: str, window: int = 20) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._file = open(path, "a")
        self._window = window
        self._last_written: Dict[str, int] = {}

    def write(self) -> None:
        by_iter = _unwritten(self._last_written, self._window)
        for it in sorted(by_iter):
            self._file.write(json.dumps({"iteration": it, **by_iter[it]}, sort_keys=True) + "\n")
        if by_iter:
            self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorboardWriter(EventWriter):
    """Writes every newly recorded scalar to TensorBoard under its own name."""

    def __init__(self, log_dir: str, window: int = 20) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._window = window
        self._last_written: Dict[str, int] = {}

    def write(self) -> None:
        for it, scalars in sorted(_unwritten(self._last_written, self._window).items()):
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, it)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class ConsoleWriter(EventWriter):
    """One line: epoch, iteration within the epoch, smoothed losses, lr, step time and ETA.

    Reads ``trainer``-set scalars: ``epoch``, ``epoch_iter``, ``lr``, ``time`` and every name ending
    in ``loss``.
    """

    def __init__(self, iters_per_epoch: Union[int, Callable[[], int]], max_iter: int, window: int = 20) -> None:
        # a callable reads the current epoch's length (video-centric packing varies per epoch)
        self._iters_per_epoch = iters_per_epoch
        self._max_iter = max_iter
        self._window = window
        self._logger = logging.getLogger(LOGGER_NAME)
        self._last_printed = -1

    def write(self) -> None:
        storage = get_event_storage()
        latest = storage.latest()
        if "epoch" not in latest or latest["epoch"][1] == self._last_printed:
            return  # nothing new since the last line
        self._last_printed = latest["epoch"][1]
        epoch = int(latest["epoch"][0])
        epoch_iter = int(latest.get("epoch_iter", (0, 0))[0])
        total = self._iters_per_epoch() if callable(self._iters_per_epoch) else self._iters_per_epoch
        parts = [f"Epoch: [{epoch:03d}][{epoch_iter:05d}/{total:05d}]"]
        hists = storage.histories()
        if "time" in hists:
            step_time = hists["time"].median(self._window)
            eta = datetime.timedelta(seconds=int(step_time * max(self._max_iter - storage.iter - 1, 0)))
            parts.append(f"Time {hists['time'].latest():.3f} ({step_time:.3f}) ETA {eta}")
        for name in sorted(hists):
            if name.endswith("loss") and "/" not in name:
                h = hists[name]
                parts.append(f"{name} {h.latest():.4f} ({h.avg(self._window):.4f})")
        if "lr" in latest:
            parts.append(f"lr {latest['lr'][0]:.3e}")
        self._logger.info("  ".join(parts))
