"""Where a grounding model succeeds and fails: recall broken down by query kind, and run reports.

The official metric gives one number per run. Researchers need it split by what the query asks
(the Ego4D template), how long the GT window is, how long the clip is and where in the clip the
window lies, plus the worst queries and several runs side by side. This module builds those
tables with pandas and writes them as CSV, a markdown report and PNG charts.

Every recall number comes from ``libs.evaluation.metrics.evaluate_predictions`` (run on each group's
predictions); per-query IoU comes from ``temporal_iou``. Nothing here re-implements the metric.
Charts need matplotlib (``pip install -e .[viz]``); tables need only pandas.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd

from libs.core.errors import DataError
from libs.utils.io import atomic_open
from libs.evaluation.metrics import (
    DEFAULT_KS,
    DEFAULT_THRESHOLDS,
    GroundTruth,
    evaluate_predictions,
    load_ground_truth_data,
    read_ground_truth_file,
    metric_name,
    prediction_key,
    prediction_windows,
    temporal_iou,
)
from libs.evaluation.submission import read_prediction_file
from libs.evaluation.visualize import QueryTimeline
from libs.utils.plotting import new_figure, require_matplotlib, save_figure

NO_TEMPLATE = "(no template)"
INF = math.inf
# (low, high, label): a value v is in the bucket when low <= v < high
GT_LENGTH_BUCKETS = ((0.0, 2.0, "under 2 s"), (2.0, 10.0, "2-10 s"), (10.0, 30.0, "10-30 s"), (30.0, INF, "over 30 s"))
# real val clips: 78% are (almost exactly) 480 s, the rest mostly 200-480 s, a few 20 min
CLIP_DURATION_BUCKETS = (
    (0.0, 300.0, "under 5 min"), (300.0, 470.0, "5-8 min"), (470.0, 490.0, "8 min"), (490.0, INF, "over 8 min"),
)
# centre of the GT window as a fraction of the clip
POSITION_BUCKETS = (
    (0.0, 0.25, "first quarter"), (0.25, 0.5, "second quarter"), (0.5, 0.75, "third quarter"), (0.75, INF, "last quarter"),
)
# breakdown name -> (column of the query table, title in the report)
BREAKDOWNS = {
    "template": ("template", "query template"),
    "gt_length": ("gt_length_bucket", "GT window length"),
    "clip_duration": ("clip_duration_bucket", "clip duration"),
    "position": ("position_bucket", "GT window position in the clip"),
}
CHART_METRICS = ("R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5")
HEADLINE_METRIC = "R1@0.5"  # the metric compared query by query between runs
RECALL_CURVE_MAX_K = 10
WORST_QUERIES = 20
WORST_RANK_K = 5  # worst queries rank by the best IoU among this many windows (the challenge's R@5)
CHART_WIDTH_IN = 15.0


def query_id_of(key: tuple) -> str:
    """``(clip_uid, annotation_uid, query_idx)`` -> the jsonl ``query_id`` ``"<annotation_uid>_<idx>"``."""
    return f"{key[1]}_{key[2]}"


def _bucket(values: np.ndarray, buckets: Sequence[tuple]) -> pd.Categorical:
    labels = [label for _, _, label in buckets]
    out = np.empty(len(values), dtype=object)
    for low, high, label in buckets:
        out[(values >= low) & (values < high)] = label
    return pd.Categorical(out, categories=labels, ordered=True)


@dataclass
class AnnotatedSplit:
    """Ground truth for scoring plus one row per query (text, template, window, buckets).

    ``queries`` is indexed by ``query_id`` and holds queries with a GT window only.
    """

    gt: GroundTruth
    queries: pd.DataFrame

    @property
    def source(self) -> str:
        return self.gt.source

    def query(self, query_id: str) -> pd.Series:
        """The row of ``query_id``; a DataError naming it and the file when it is unknown."""
        if query_id not in self.queries.index:
            raise DataError(f"unknown query id {query_id!r}: not a query with a GT window in {self.source}")
        return self.queries.loc[query_id]


def _query_rows(data: Any, gt: GroundTruth) -> list:
    """(key, text, template) of every query, from the official json or jsonl records."""
    rows = []
    if isinstance(data, dict):
        for video in data["videos"]:
            for clip in video["clips"]:
                for ann in clip["annotations"]:
                    for idx, query in enumerate(ann["language_queries"]):
                        key = (clip["clip_uid"], ann["annotation_uid"], idx)
                        rows.append((key, query.get("query") or "", query.get("template")))
    else:
        for record in data:
            key = prediction_key(record)
            rows.append((key, record.get("query") or "", record.get("template")))
    return rows


def load_split(gt_file: str) -> AnnotatedSplit:
    """Read the official NLQ json (or jsonl records) once: GT for scoring and the query table."""
    data = read_ground_truth_file(gt_file)
    gt = load_ground_truth_data(data, gt_file)  # validates the structure
    table = []
    for key, text, template in _query_rows(data, gt):
        window = gt.windows.get(key)
        if window is None:
            continue
        table.append({
            "query_id": query_id_of(key), "clip_uid": key[0], "annotation_uid": key[1], "query_idx": key[2],
            "query": text, "template": template if isinstance(template, str) and template else NO_TEMPLATE,
            "gt_start": window[0], "gt_end": window[1], "duration": gt.durations[key[0]],
        })
    columns = ["query_id", "clip_uid", "annotation_uid", "query_idx", "query", "template", "gt_start", "gt_end", "duration"]
    queries = pd.DataFrame(table, columns=columns).set_index("query_id")
    queries["gt_length"] = queries["gt_end"] - queries["gt_start"]
    centre = (queries["gt_start"] + queries["gt_end"]) / 2.0
    queries["position"] = (centre / queries["duration"].where(queries["duration"] > 0)).fillna(0.0)
    queries["gt_length_bucket"] = _bucket(queries["gt_length"].to_numpy(), GT_LENGTH_BUCKETS)
    queries["clip_duration_bucket"] = _bucket(queries["duration"].to_numpy(), CLIP_DURATION_BUCKETS)
    queries["position_bucket"] = _bucket(queries["position"].to_numpy(), POSITION_BUCKETS)
    return AnnotatedSplit(gt=gt, queries=queries)


@dataclass
class Run:
    """The saved predictions of one run: normalised records keyed by ``query_id``."""

    name: str
    path: str
    records: list
    by_query: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_query = {query_id_of(prediction_key(r)): r for r in self.records}

    def record(self, query_id: str) -> dict:
        if query_id not in self.by_query:
            raise DataError(f"{self.path}: no prediction for query {query_id!r}")
        return self.by_query[query_id]


def run_names(paths: Sequence[str]) -> list:
    """Short distinct names for prediction files: the file stem, with its folder when stems clash."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    names = [
        f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}/{s}" if stems.count(s) > 1 else s
        for p, s in zip(paths, stems)
    ]
    return [f"{n} ({i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def load_runs(paths: Sequence[str], split: AnnotatedSplit, names: Optional[Sequence[str]] = None) -> list:
    """Read prediction files (the ``--save`` layout or a submission), checked against the split."""
    if not paths:
        raise DataError("no prediction file given")
    if names is not None and len(names) != len(paths):
        raise DataError(f"{len(names)} run names given for {len(paths)} prediction files")
    names = list(names) if names is not None else run_names(paths)
    return [Run(name=n, path=p, records=read_prediction_file(p, split.gt)) for n, p in zip(names, paths)]


def _scored_records(run: Run, split: AnnotatedSplit) -> list:
    """The run's records that have a GT window (the ones the metric can score)."""
    return [r for q, r in run.by_query.items() if q in split.queries.index]


def per_query_table(
    run: Run, split: AnnotatedSplit, ks: Sequence[int] = DEFAULT_KS, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """One row per scored query: the query's columns plus top-1 window, score and IoU, the best
    IoU among the first ``WORST_RANK_K`` windows, and a boolean hit column per ``R{k}@{th}``."""
    records = _scored_records(run, split)
    if not records:
        raise DataError(f"{run.path}: none of its queries has a GT window in {split.source}")
    k_max = max(max(ks), WORST_RANK_K)
    ids = [query_id_of(prediction_key(r)) for r in records]
    pred = np.full((len(records), k_max, 2), np.nan)  # (Q, K, 2) seconds; NaN = no window
    top1_score = np.full(len(records), np.nan)  # (Q,)
    for row, record in enumerate(records):
        windows = prediction_windows(record)[:k_max]
        pred[row, : len(windows)] = windows
        if record.get("scores"):
            top1_score[row] = record["scores"][0]
    rows = split.queries.loc[ids]
    target = rows[["gt_start", "gt_end"]].to_numpy(dtype=np.float64)[:, None, :]  # (Q, 1, 2)
    iou = temporal_iou(pred, target)  # (Q, K), NaN for absent windows and 0 / 0
    table = rows.copy()
    table["top1_start"], table["top1_end"] = pred[:, 0, 0], pred[:, 0, 1]
    table["top1_score"] = top1_score
    table["top1_iou"] = np.nan_to_num(iou[:, 0], nan=0.0)
    table[f"best_iou_top{WORST_RANK_K}"] = np.nan_to_num(iou[:, :WORST_RANK_K], nan=0.0).max(axis=1)
    for k in ks:
        for th in thresholds:
            table[metric_name(k, th)] = (iou[:, :k] > th).any(axis=1)  # NaN > th is False: a miss
    return table


def breakdown_table(
    run: Run, split: AnnotatedSplit, by: str,
    ks: Sequence[int] = DEFAULT_KS, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Official recall per group of ``BREAKDOWNS[by]``: columns ``group, num_queries, R.., mIoU``.

    Groups in bucket order (templates: most queries first); empty groups are left out.
    """
    if by not in BREAKDOWNS:
        raise DataError(f"unknown breakdown {by!r}; expected one of {sorted(BREAKDOWNS)}")
    column = BREAKDOWNS[by][0]
    records = _scored_records(run, split)
    groups = split.queries.loc[[query_id_of(prediction_key(r)) for r in records], column]
    if by == "template":
        counts = groups.value_counts()
        order = sorted(counts.index, key=lambda g: (g == NO_TEMPLATE, -counts[g], g))  # most queries first
    else:
        order = list(groups.cat.categories)
    rows = []
    for group in order:
        members = [r for r, g in zip(records, groups) if g == group]
        if not members:
            continue
        metrics = evaluate_predictions(members, split.gt, ks=ks, thresholds=thresholds)
        rows.append({"group": group, **{k: v for k, v in metrics.items() if k != "num_queries"},
                     "num_queries": metrics["num_queries"]})
    table = pd.DataFrame(rows)
    return table[["group", "num_queries"] + [c for c in table.columns if c not in ("group", "num_queries")]]


def overall_table(
    runs: Sequence[Run], split: AnnotatedSplit,
    ks: Sequence[int] = DEFAULT_KS, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """One row per run (official recall and mIoU); with several runs, a ``<run> - <first>`` row each."""
    rows = []
    for run in runs:
        metrics = evaluate_predictions(_scored_records(run, split), split.gt, ks=ks, thresholds=thresholds)
        rows.append({"run": run.name, **metrics})
    table = pd.DataFrame(rows)
    metric_columns = [c for c in table.columns if c not in ("run", "num_queries")]
    deltas = []
    for i in range(1, len(runs)):
        delta = {"run": f"{runs[i].name} - {runs[0].name}", "num_queries": np.nan}
        delta.update({c: table.loc[i, c] - table.loc[0, c] for c in metric_columns})
        deltas.append(delta)
    if deltas:
        table = pd.concat([table, pd.DataFrame(deltas)], ignore_index=True)
    table["num_queries"] = table["num_queries"].astype("Int64")  # empty on the difference rows
    return table[["run", "num_queries"] + metric_columns]


def recall_at_k_table(
    runs: Sequence[Run], split: AnnotatedSplit, max_k: int = RECALL_CURVE_MAX_K,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Recall at every K from 1 to ``max_k`` for each run and IoU threshold (long format:
    ``run, k, threshold, recall``)."""
    ks = list(range(1, max_k + 1))
    rows = []
    for run in runs:
        metrics = evaluate_predictions(_scored_records(run, split), split.gt, ks=ks, thresholds=thresholds)
        for th in thresholds:
            rows += [{"run": run.name, "k": k, "threshold": th, "recall": metrics[metric_name(k, th)]} for k in ks]
    return pd.DataFrame(rows)


def side_by_side(tables: dict, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """Breakdown tables of several runs -> ``group, num_queries (first run), <run>.., <run> - <first>..``."""
    names = list(tables)
    groups = list(tables[names[0]]["group"])
    for name in names[1:]:
        groups += [g for g in tables[name]["group"] if g not in groups]  # first run's order, then new ones
    merged = pd.DataFrame({"group": groups})
    merged["num_queries"] = tables[names[0]].set_index("group")["num_queries"].reindex(groups).astype("Int64").to_numpy()
    for name in names:
        merged[name] = tables[name].set_index("group")[metric].reindex(groups).to_numpy()
    for name in names[1:]:
        merged[f"{name} - {names[0]}"] = merged[name] - merged[names[0]]
    return merged


def query_changes(per_query: dict, metric: str = HEADLINE_METRIC) -> pd.DataFrame:
    """For each run after the first: queries it wins and loses on ``metric`` against the first run
    (queries both runs answered), and the resulting recall difference."""
    names = list(per_query)
    base = per_query[names[0]][metric]
    rows = []
    for name in names[1:]:
        other = per_query[name][metric]
        common = base.index.intersection(other.index)
        b, o = base.loc[common], other.loc[common]
        rows.append({
            "run": name, "baseline": names[0], "metric": metric, "common_queries": len(common),
            "both_hit": int((b & o).sum()), "only_run_hits": int((o & ~b).sum()),
            "only_baseline_hits": int((b & ~o).sum()), "neither": int((~b & ~o).sum()),
            "recall_difference": float(100.0 * (o.mean() - b.mean())) if len(common) else np.nan,
        })
    return pd.DataFrame(rows)


def worst_queries(per_query: pd.DataFrame, count: int = WORST_QUERIES) -> pd.DataFrame:
    """The ``count`` worst queries: lowest best-IoU among the top windows, and among equals the
    most confident top-1 first (a confident miss says more than an unsure one)."""
    best = f"best_iou_top{WORST_RANK_K}"
    order = per_query.assign(_score=per_query["top1_score"].fillna(-np.inf), _id=per_query.index)
    order = order.sort_values([best, "_score", "_id"], ascending=[True, False, True], kind="mergesort")
    columns = ["clip_uid", "query", "template", "gt_start", "gt_end", "top1_start", "top1_end", "top1_score",
               "top1_iou", best]
    return order[columns].head(count)


def build_timeline(query_id: str, run: Run, split: AnnotatedSplit, level_curves: Optional[list] = None) -> QueryTimeline:
    """Everything the timeline figure of ``query_id`` shows (DataError when the id is unknown)."""
    row = split.query(query_id)
    record = run.record(query_id)
    scores = record.get("scores")
    return QueryTimeline(
        query_id=query_id, clip_uid=row["clip_uid"], text=row["query"],
        template=None if row["template"] == NO_TEMPLATE else row["template"], duration=float(row["duration"]),
        gt_window=(float(row["gt_start"]), float(row["gt_end"])),
        windows=prediction_windows(record), scores=None if scores is None else np.asarray(scores),
        level_curves=level_curves,
    )


# ---------------------------------------------------------------------------------------------
# charts


def breakdown_chart_height(num_groups: int, num_runs: int) -> float:
    """Inches: room for title, legend and axis labels, plus a row per group that widens with runs."""
    height = max(2.75, 1.6 + 0.32 * num_groups * max(1.0, 0.55 * num_runs))
    return math.ceil(height * 4) / 4  # quarter inches: a whole number of pixels at FIGURE_DPI


def plot_breakdown(tables: dict, title: str, out_path: str, metrics: Sequence[str] = CHART_METRICS) -> str:
    """Horizontal bars: one panel per metric, one row per group, one bar per run. Returns the path."""
    require_matplotlib()
    names = list(tables)
    groups = list(tables[names[0]]["group"])
    for name in names[1:]:
        groups += [g for g in tables[name]["group"] if g not in groups]
    counts = dict(zip(tables[names[0]]["group"], tables[names[0]]["num_queries"]))
    metrics = [m for m in metrics if m in tables[names[0]].columns]
    bar = 0.8 / len(names)
    height = breakdown_chart_height(len(groups), len(names))
    fig = new_figure(CHART_WIDTH_IN, height)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    labels = [f"{g}  (n={int(counts[g])})" if g in counts else str(g) for g in groups]
    left_in = 0.3 + 0.052 * max(len(label) for label in labels)  # room for the group labels (8 pt)
    fig.subplots_adjust(left=left_in / CHART_WIDTH_IN, right=0.99, top=1.0 - 0.75 / height, bottom=0.55 / height, wspace=0.08)
    y = np.arange(len(groups))
    colors = [f"C{i}" for i in range(len(names))]
    for ax, metric in zip(axes, metrics):
        for i, name in enumerate(names):
            values = tables[name].set_index("group")[metric].reindex(groups).to_numpy(dtype=float)
            offset = (i - (len(names) - 1) / 2) * bar
            ax.barh(y + offset, np.nan_to_num(values), height=bar, color=colors[i], label=name)
            for yy, v in zip(y + offset, values):
                if not np.isnan(v):
                    ax.text(v + 1, yy, f"{v:.1f}", va="center", fontsize=7)
        ax.set_xlim(0, 110)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("recall (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[0].invert_yaxis()
    if len(names) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", ncol=len(names), fontsize=9, frameon=False)
    fig.suptitle(title, x=0.02, ha="left", fontsize=11)
    return save_figure(fig, out_path)


def plot_recall_at_k(table: pd.DataFrame, out_path: str) -> str:
    """Recall against K, one line per run and IoU threshold. Returns the path."""
    require_matplotlib()
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    styles = ("-", "--", ":", "-.")
    for i, (run, run_rows) in enumerate(table.groupby("run", sort=False)):
        for j, (th, rows) in enumerate(run_rows.groupby("threshold")):
            ax.plot(rows["k"], rows["recall"], styles[j % len(styles)], marker="o", ms=3, color=f"C{i}",
                    label=f"{run}, IoU > {th:g}")
    ax.set_xlabel("K (windows kept)")
    ax.set_ylabel("recall (%)")
    ax.set_xticks(sorted(table["k"].unique()))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Recall@K")
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.12)
    return save_figure(fig, out_path)


# ---------------------------------------------------------------------------------------------
# report


def write_csv(table: pd.DataFrame, path: str, index: bool = False) -> str:
    """CSV atomically (floats with full precision, so they compare with the metric code)."""
    with atomic_open(path, "w", newline="") as f:
        table.to_csv(f, index=index)
    return path


def markdown_table(table: pd.DataFrame, float_format: str = "{:.2f}") -> str:
    """A pipe table (pandas' ``to_markdown`` needs the optional ``tabulate``)."""
    def cell(v: Any) -> str:
        if v is pd.NA:
            return ""
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else float_format.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join(" ---: " if pd.api.types.is_numeric_dtype(table[c]) else " --- " for c in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule] + body)


def write_report(
    pred_files: Sequence[str], gt_file: Union[str, AnnotatedSplit], out_dir: str,
    names: Optional[Sequence[str]] = None, ks: Sequence[int] = DEFAULT_KS,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, worst: int = WORST_QUERIES, charts: bool = True,
) -> str:
    """Analyse one or more prediction files against the split; write ``report.md``, CSV tables
    (``tables/``) and PNG charts (``charts/``, when ``charts``) into ``out_dir``. Returns the
    report's path. The first file is the baseline the others are compared with."""
    if charts:
        require_matplotlib()  # fail before any work
    split = gt_file if isinstance(gt_file, AnnotatedSplit) else load_split(gt_file)
    runs = load_runs(pred_files, split, names)
    tables_dir, charts_dir = os.path.join(out_dir, "tables"), os.path.join(out_dir, "charts")
    lines = [f"# Grounding analysis: {', '.join(r.name for r in runs)}", "",
             f"Ground truth: `{split.source}`. Runs: " + ", ".join(f"`{r.name}` (`{r.path}`)" for r in runs) + ".",
             "Recall is the official Ego4D metric (IoU > threshold, strict), in percent.", ""]

    overall = overall_table(runs, split, ks, thresholds)
    write_csv(overall, os.path.join(tables_dir, "overall.csv"))
    lines += ["## Overall", "", markdown_table(overall), ""]
    recall_k = recall_at_k_table(runs, split, max(RECALL_CURVE_MAX_K, max(ks)), thresholds)
    write_csv(recall_k, os.path.join(tables_dir, "recall_at_k.csv"))
    if charts:
        plot_recall_at_k(recall_k, os.path.join(charts_dir, "recall_at_k.png"))
        lines += ["![Recall@K](charts/recall_at_k.png)", ""]

    per_query = {r.name: per_query_table(r, split, ks, thresholds) for r in runs}
    for by, (_, title) in BREAKDOWNS.items():
        tables = {r.name: breakdown_table(r, split, by, ks, thresholds) for r in runs}
        long = pd.concat([t.assign(run=name) for name, t in tables.items()], ignore_index=True)
        write_csv(long[["run"] + [c for c in long.columns if c != "run"]], os.path.join(tables_dir, f"by_{by}.csv"))
        lines += [f"## By {title}", ""]
        if charts:
            plot_breakdown(tables, f"Recall by {title}", os.path.join(charts_dir, f"by_{by}.png"))
            lines += [f"![Recall by {title}](charts/by_{by}.png)", ""]
        for name, table in tables.items():
            if len(runs) > 1:
                lines += [f"**{name}**", ""]
            lines += [markdown_table(table), ""]
        if len(runs) > 1:
            lines += [f"{HEADLINE_METRIC} side by side:", "", markdown_table(side_by_side(tables)), ""]

    if len(runs) > 1:
        changes = query_changes({n: t for n, t in per_query.items()})
        write_csv(changes, os.path.join(tables_dir, "query_changes.csv"))
        lines += ["## Query by query against the first run", "",
                  f"Queries each run hits ({HEADLINE_METRIC}) that `{runs[0].name}` misses, and the reverse.", "",
                  markdown_table(changes), ""]

    for name, table in per_query.items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        write_csv(table, os.path.join(tables_dir, f"per_query_{safe}.csv"), index=True)
        bad = worst_queries(table, worst)
        write_csv(bad, os.path.join(tables_dir, f"worst_{safe}.csv"), index=True)
        lines += [f"## Worst queries: {name}", "",
                  "Lowest best-IoU among the top windows, most confident first. Draw one with "
                  f"`python tools/visualize.py --pred {runs[[r.name for r in runs].index(name)].path} "
                  f"--gt {split.source} --query-id ID`.", "",
                  markdown_table(bad.reset_index()), ""]

    report = os.path.join(out_dir, "report.md")
    with atomic_open(report, "w") as f:
        f.write("\n".join(lines))
    return report
