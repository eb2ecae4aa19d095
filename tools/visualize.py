#!/usr/bin/env python
"""Draw queries on their clip's timeline: GT window, top-5 predictions with score and IoU.

    python tools/visualize.py --pred PREDICTIONS.json --gt nlq_val.json --query-id ID [ID ...] [--out DIR]
    python tools/visualize.py --pred PREDICTIONS.json --gt nlq_val.json --worst N   [--out DIR]
    python tools/visualize.py --pred PREDICTIONS.json --gt nlq_val.json --random N  [--seed S] [--out DIR]

PREDICTIONS.json is eval.py's ``*_predictions.json`` (rows [start, end, score]) or a submission;
ID is the jsonl ``query_id`` (``<annotation_uid>_<query index>``). ``--raw FILE`` adds the
per-level score curves from a raw-output file ({query_id: [{times, scores} per level]},
torch.save). One PNG per query, ``timeline_<ID>.png``, in DIR (default ``viz``).
Needs matplotlib: pip install -e .[viz]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from libs.core.errors import ConfigError  # noqa: E402

from libs.utils.cli import run_command  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="prediction or submission file")
    parser.add_argument("--gt", required=True, help="official NLQ json of the split (or its jsonl records)")
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--query-id", nargs="+", metavar="ID", help="queries to draw")
    pick.add_argument("--worst", type=int, metavar="N", help="draw the N worst queries (lowest best IoU@5)")
    pick.add_argument("--random", type=int, metavar="N", help="draw N queries picked at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random")
    parser.add_argument("--raw", default=None, help="raw-output file: add the per-level score curves")
    parser.add_argument("--top-k", type=int, default=5, help="predicted windows drawn per query")
    parser.add_argument("--out", default="viz", help="output folder (created)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def pick_queries(args: argparse.Namespace, run, split) -> list:
    """The query ids to draw, in order."""
    from libs.evaluation.analysis import per_query_table, worst_queries

    if args.query_id:
        return list(args.query_id)
    count = args.worst if args.worst is not None else args.random
    if count < 1:
        raise ConfigError(f"--{'worst' if args.worst is not None else 'random'} {count}: expected at least 1")
    scored = [q for q in run.by_query if q in split.queries.index]
    if args.worst is not None:
        return list(worst_queries(per_query_table(run, split), count).index)
    rng = np.random.default_rng(args.seed)
    return [scored[i] for i in sorted(rng.choice(len(scored), size=min(count, len(scored)), replace=False))]


def run(args: argparse.Namespace) -> list:
    from libs.evaluation.analysis import build_timeline, load_runs, load_split
    from libs.evaluation.visualize import load_level_curves, render_timelines
    from libs.utils.plotting import require_matplotlib

    require_matplotlib()
    if args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k}: expected at least 1")
    split = load_split(args.gt)
    (predictions,) = load_runs([args.pred], split)
    views = []
    for query_id in pick_queries(args, predictions, split):
        curves = load_level_curves(args.raw, query_id) if args.raw else None
        views.append(build_timeline(query_id, predictions, split, curves))  # all checked before drawing
    paths = render_timelines(views, args.out, args.top_k)
    for path in paths:
        print(f"wrote {path}")
    return paths


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
