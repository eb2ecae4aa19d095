"""Loss curves, learning rate and validation recall of a training run, as one PNG.

TensorBoard needs a running server; a PNG next to the run's logs can be opened anywhere and
pasted into a report. ``plot_training_curves(run_dir)`` reads the run's ``metrics.jsonl`` (the
``JSONWriter``'s one object per line) and is called by the trainer at the end of training.

Reading is forgiving: any key may be missing from any line, non-numeric values and malformed
lines (a run killed mid-write) are skipped. Losses are the keys ending in ``loss``; recall keys
are ``R<k>@<th>`` and ``mIoU``, bare or with a prefix (``val/R1@0.5``, ``val_ema/R1@0.5``).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any, Optional

from libs.core.errors import DataError
from libs.utils.plotting import new_figure, require_matplotlib, save_figure

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
FIGURE_SIZE_IN = (16.0, 4.5)
RECALL_KEY = re.compile(r"^(?:(?P<prefix>[^/]+)/)?(?P<name>R\d+@[0-9.]+|mIoU)$")
DEFAULT_RECALL_PREFIX = "val"  # the evaluation hook's prefix, left out of legend labels


def read_metrics_log(path: str) -> list:
    """The numeric scalars of each line of a ``metrics.jsonl``, as dicts, in file order.

    A missing file raises a DataError; malformed lines are skipped with one warning.
    """
    if not os.path.isfile(path):
        raise DataError(f"training log not found: {path} (written by the trainer's JSON writer)")
    entries, bad = [], 0
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(obj, dict):
                bad += 1
                continue
            entries.append({
                k: float(v) for k, v in obj.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            })
    if bad:
        logger.warning("%s: skipped %d malformed line(s)", path, bad)
    return entries


def training_series(entries: list) -> dict:
    """Split log entries into plotted series, each ``(iterations, values)`` lists.

    Returns ``{"loss": {name: ..}, "lr": {"lr": ..}, "recall": {label: ..}}``. A line without
    ``iteration`` is placed one step after the previous line.
    """
    series: dict = {"loss": {}, "lr": {}, "recall": {}}
    iteration = -1.0
    for entry in entries:
        iteration = entry.get("iteration", iteration + 1)
        for key, value in entry.items():
            match = RECALL_KEY.match(key)
            if match:
                prefix = match.group("prefix")
                label = match.group("name") if prefix in (None, DEFAULT_RECALL_PREFIX) else key
                group = "recall"
            elif key.endswith("loss") and "/" not in key:
                group, label = "loss", key
            elif key == "lr":
                group, label = "lr", key
            else:
                continue
            xs, ys = series[group].setdefault(label, ([], []))
            xs.append(iteration)
            ys.append(value)
    return series


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the log", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot_training_curves(run_dir: str, out_path: Optional[str] = None) -> str:
    """Draw losses, learning rate and validation recall of ``run_dir/metrics.jsonl`` into
    ``out_path`` (default ``run_dir/training_curves.png``, beside the ``logs/`` TensorBoard
    folder) and return the PNG's path."""
    require_matplotlib()
    log_path = os.path.join(run_dir, METRICS_FILE)
    series = training_series(read_metrics_log(log_path))
    out_path = out_path or os.path.join(run_dir, CURVES_FILE)

    fig = new_figure(*FIGURE_SIZE_IN)
    ax_loss, ax_lr, ax_recall = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.86, bottom=0.14, wspace=0.25)

    for name, (xs, ys) in sorted(series["loss"].items()):
        ax_loss.plot(xs, ys, lw=1.2, label=name)
    if series["loss"]:
        ax_loss.legend(fontsize=8)
    else:
        _empty(ax_loss, "losses")
    ax_loss.set_title("training losses")

    if series["lr"]:
        xs, ys = series["lr"]["lr"]
        ax_lr.plot(xs, ys, lw=1.2, color="C3")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        _empty(ax_lr, "learning rate")
    ax_lr.set_title("learning rate")

    for name, (xs, ys) in sorted(series["recall"].items()):
        style = "--" if name.endswith("mIoU") else "-"
        best = max(range(len(ys)), key=lambda j: ys[j])
        line = ax_recall.plot(xs, ys, style, marker="o", ms=4, lw=1.2,
                              label=f"{name} (best {ys[best]:.2f} @ {xs[best]:g})")[0]
        ax_recall.plot([xs[best]], [ys[best]], marker="*", ms=11, color=line.get_color())
    if series["recall"]:
        ax_recall.legend(fontsize=7, ncol=2, loc="best")
    else:
        _empty(ax_recall, "validation results")
    ax_recall.set_title("validation recall (%) per evaluation")

    for ax in (ax_loss, ax_lr, ax_recall):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle(f"training run {os.path.basename(os.path.abspath(run_dir))}", fontsize=11)
    return save_figure(fig, out_path)
