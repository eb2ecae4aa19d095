"""One query on its clip's timeline: the GT window, the top-ranked predictions and their IoU.

Researchers judge a grounding model by looking at where it fires; this draws that picture for
one query (``render_timeline``) so nobody rewrites it in a notebook. The figure has

* a full-clip panel: the GT window (green band) and the top-k predicted windows, one row each,
  labelled with rank, score and official IoU, coloured by the best threshold they pass;
* a zoom panel around the GT window (a 4 s window in a 480 s clip is only a few pixels wide);
* optionally, the per-level score curves of the raw model outputs (``load_level_curves``).

matplotlib is an optional extra (``pip install -e .[viz]``). Figures are built with
``matplotlib.figure.Figure`` and written through the Agg renderer: no pyplot global state, no
display needed, safe to call at the end of training. Every PNG is written atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from libs.core.errors import DataError
from libs.evaluation.metrics import temporal_iou
from libs.utils.plotting import new_figure, require_matplotlib, save_figure

TIMELINE_WIDTH_IN = 13.0
TIMELINE_HEIGHT_IN = 4.8  # without score curves
CURVES_HEIGHT_IN = 2.2  # added when per-level score curves are drawn
TOP_K = 5  # predicted windows drawn per query (the challenge scores R@1 and R@5)
ZOOM_MARGIN_FACTOR = 3.0  # zoom panel: GT window +- this many GT lengths ...
ZOOM_MIN_MARGIN_S = 10.0  # ... and at least this many seconds
HIT_COLORS = (  # (IoU threshold, colour, legend label), best first; below all: a miss
    (0.5, "#2ca02c", "IoU > 0.5"),
    (0.3, "#ff7f0e", "IoU > 0.3"),
)
MISS_COLOR = "#d62728"
NO_GT_COLOR = "#7f7f7f"  # a user's own question has no ground truth: neither hit nor miss
GT_COLOR = "#1f77b4"


@dataclass
class QueryTimeline:
    """What one timeline figure shows (seconds throughout).

    ``windows`` ``(K, 2)`` best first; ``scores`` ``(K,)`` or None (a submission has none);
    ``level_curves``: per pyramid level ``(times (T_l,), scores (T_l,))``, or None.
    """

    query_id: str
    clip_uid: str
    text: str
    template: Optional[str]
    duration: float
    gt_window: Optional[tuple]
    windows: np.ndarray
    scores: Optional[np.ndarray] = None
    level_curves: Optional[list] = None

    def ious(self) -> np.ndarray:
        """Official IoU of each window with the GT, ``(K,)``; NaN without GT (and for 0 / 0)."""
        if self.gt_window is None or len(self.windows) == 0:
            return np.full(len(self.windows), np.nan)
        return temporal_iou(np.asarray(self.windows, dtype=np.float64), np.asarray(self.gt_window, dtype=np.float64))


def load_level_curves(path: str, query_id: str) -> list:
    """Per-level score curves of one query from a raw-output file.

    The file (``torch.save``) maps ``query_id`` to a list with one entry per pyramid level,
    ``{"times": (T_l,) seconds, "scores": (T_l,) probabilities}`` (tensors or arrays).
    Returns ``[(times, scores), ...]`` as float64 arrays.
    """
    import torch

    if not os.path.isfile(path):
        raise DataError(f"raw-output file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of a foreign file
        raise DataError(f"{path}: not a raw-output file written with torch.save ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a dict {{query_id: [per-level {{times, scores}}]}}")
    if query_id not in raw:
        raise DataError(f"{path}: no raw outputs for query {query_id!r}")
    curves = []
    for level, entry in enumerate(raw[query_id]):
        if not isinstance(entry, dict) or "times" not in entry or "scores" not in entry:
            raise DataError(f"{path}: query {query_id!r} level {level}: expected a dict with 'times' and 'scores'")
        times = np.asarray(entry["times"], dtype=np.float64).reshape(-1)
        scores = np.asarray(entry["scores"], dtype=np.float64).reshape(-1)
        if times.shape != scores.shape:
            raise DataError(
                f"{path}: query {query_id!r} level {level}: times {times.shape} and scores {scores.shape} differ"
            )
        curves.append((times, scores))
    return curves


def _hit_color(iou: float) -> str:
    if np.isnan(iou):
        return NO_GT_COLOR
    for threshold, color, _ in HIT_COLORS:
        if iou > threshold:  # strict, as the official metric
            return color
    return MISS_COLOR


def _row_label(rank: int, score: Optional[float], iou: float) -> str:
    score_text = f"score {score:.3f}" if score is not None else "no score"
    iou_text = "IoU n/a" if np.isnan(iou) else f"IoU {iou:.2f}"
    return f"#{rank}  {score_text}  {iou_text}"


def _draw_rows(ax: Any, view: QueryTimeline, windows: np.ndarray, ious: np.ndarray, with_labels: bool) -> None:
    """GT band and row, then one bar (with a centre tick, visible however short) per window."""
    num = len(windows)
    if view.gt_window is not None:
        start, end = view.gt_window
        ax.axvspan(start, end, color=GT_COLOR, alpha=0.18, lw=0)
        ax.barh(0, end - start, left=start, height=0.6, color=GT_COLOR, edgecolor="black", lw=0.6)
        ax.plot([(start + end) / 2], [0], marker="|", ms=14, mew=2, color="black")
    for row, (start, end) in enumerate(windows, start=1):
        color = _hit_color(float(ious[row - 1]))
        ax.barh(row, end - start, left=start, height=0.6, color=color, edgecolor="black", lw=0.6, alpha=0.9)
        ax.plot([(start + end) / 2], [row], marker="|", ms=14, mew=2, color=color)
    ax.set_ylim(num + 0.6, -0.6)  # rank 1 right under the GT row
    ax.set_yticks(range(num + 1))
    if with_labels:
        scores = view.scores
        labels = ["ground truth" if view.gt_window is not None else "ground truth (none)"]
        labels += [
            _row_label(r + 1, None if scores is None else float(scores[r]), float(ious[r])) for r in range(num)
        ]
        ax.set_yticklabels(labels, fontsize=9, family="monospace")
    else:
        ax.tick_params(axis="y", labelleft=False)
    ax.grid(axis="x", alpha=0.3)


def _zoom_range(view: QueryTimeline) -> tuple:
    start, end = view.gt_window
    margin = max(ZOOM_MARGIN_FACTOR * (end - start), ZOOM_MIN_MARGIN_S)
    return max(0.0, start - margin), min(view.duration, end + margin)


def _title(view: QueryTimeline) -> str:
    template = view.template or "no template"
    gt = "no GT" if view.gt_window is None else f"GT [{view.gt_window[0]:.1f}, {view.gt_window[1]:.1f}] s"
    return (
        f"\u201c{view.text.strip()}\u201d\n"
        f"template: {template}   |   {gt}\n"
        f"query {view.query_id}   |   clip {view.clip_uid} ({view.duration:.0f} s)"
    )


def render_timeline(view: QueryTimeline, out_path: str, top_k: int = TOP_K) -> str:
    """Draw one query's timeline figure to ``out_path`` (PNG, fixed size) and return the path."""
    from matplotlib.patches import Patch

    windows = np.asarray(view.windows, dtype=np.float64).reshape(-1, 2)[:top_k]  # (K, 2) seconds
    ious = view.ious()[:top_k]  # (K,)
    curves = view.level_curves or []
    height = TIMELINE_HEIGHT_IN + (CURVES_HEIGHT_IN if curves else 0.0)
    fig = new_figure(TIMELINE_WIDTH_IN, height)
    rows = 2 if curves else 1
    grid = fig.add_gridspec(  # margins in inches: 1.05 for the title, 0.85 for the axis label and legend
        rows, 2, width_ratios=(3.2, 1.0), height_ratios=(2.2, 1.0)[:rows],
        left=0.2, right=0.98, top=1.0 - 1.05 / height, bottom=0.85 / height, wspace=0.06, hspace=0.5,
    )
    ax_full = fig.add_subplot(grid[0, 0])
    _draw_rows(ax_full, view, windows, ious, with_labels=True)
    ax_full.set_xlim(0.0, view.duration)
    ax_full.set_xlabel("time in clip (s)")
    ax_full.set_title("whole clip", fontsize=10, loc="left")

    ax_zoom = fig.add_subplot(grid[0, 1], sharey=ax_full)
    if view.gt_window is not None:
        _draw_rows(ax_zoom, view, windows, ious, with_labels=False)
        ax_zoom.set_xlim(*_zoom_range(view))
        ax_zoom.set_title("around the GT window", fontsize=10, loc="left")
        ax_zoom.set_xlabel("time (s)")
    else:
        ax_zoom.axis("off")

    if curves:
        ax_curves = fig.add_subplot(grid[1, 0])  # under the whole-clip panel, same time axis
        for level, (times, scores) in enumerate(curves):
            ax_curves.plot(times, scores, lw=1.0, label=f"level {level}")
        if view.gt_window is not None:
            ax_curves.axvspan(*view.gt_window, color=GT_COLOR, alpha=0.18, lw=0)
        ax_curves.set_xlim(0.0, view.duration)
        ax_curves.set_ylim(0.0, 1.0)
        ax_curves.set_xlabel("time in clip (s)")
        ax_curves.set_ylabel("score")
        ax_curves.set_title("per-level scores (raw outputs)", fontsize=10, loc="left")
        ax_curves.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, ncol=2, frameon=False)
        ax_curves.grid(alpha=0.3)

    if view.gt_window is None:
        handles = [Patch(color=NO_GT_COLOR, label="predicted window (no ground truth)")]
    else:
        handles = [Patch(color=GT_COLOR, label="ground truth")]
        handles += [Patch(color=color, label=label) for _, color, label in HIT_COLORS]
        handles.append(Patch(color=MISS_COLOR, label=f"IoU \u2264 {HIT_COLORS[-1][0]}"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(_title(view), x=0.02, y=1.0 - 0.08 / height, ha="left", va="top", fontsize=10.5)
    return save_figure(fig, out_path)


def timeline_file_name(query_id: str) -> str:
    """File name of a query's figure: its id with path-unsafe characters replaced."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(query_id))
    return f"timeline_{safe}.png"


def render_timelines(views: Sequence[QueryTimeline], out_dir: str, top_k: int = TOP_K) -> list:
    """One figure per query in ``out_dir``; returns the paths in the order given."""
    require_matplotlib()
    return [render_timeline(v, os.path.join(out_dir, timeline_file_name(v.query_id)), top_k) for v in views]
