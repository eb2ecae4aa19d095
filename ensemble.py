"""Fuse several models' prediction files into one EvalAI submission.

    python ensemble.py PRED1.json PRED2.json ... --out SUBMISSION.json \
        [--method reference|weighted] [--weights w1 w2 ...] [--gt GT] [--debug]

Inputs are prediction files with scores (``eval.py`` writes them; the reference's ``--save``
files, rows ``[start, end, score]``, work too). Queries are matched by
``(clip_uid, annotation_uid, query_idx)``, not by position. ``--gt`` (official json or jsonl
records of the split) validates the submission before it is written. Methods: see
``libs/evaluation/ensemble.py``.
"""
from __future__ import annotations

import argparse
import sys

from libs.utils.cli import run_command
from libs.evaluation.ensemble import ENSEMBLE_METHODS, ensemble_predictions
from libs.utils.io import save_json
from libs.evaluation.submission import load_prediction_file, validate_submission


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fuse prediction files into one NLQ submission.")
    parser.add_argument("predictions", nargs="+", help="prediction files with [start, end, score] rows")
    parser.add_argument("--out", required=True, help="submission file to write")
    parser.add_argument("--method", default="reference", choices=ENSEMBLE_METHODS,
                        help="reference: the GroundNLQ challenge fusion; weighted: 1-D weighted box fusion")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="one weight per prediction file (weighted method only; default all 1)")
    parser.add_argument("--gt", default=None, help="official json or jsonl records to validate against")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    prediction_sets = [load_prediction_file(path, require_scores=True) for path in args.predictions]
    submission = ensemble_predictions(prediction_sets, args.predictions, args.method, args.weights)
    if args.gt:
        validate_submission(submission, args.gt)
    save_json(submission, args.out)
    print(f"wrote {args.out}: {len(submission['results'])} queries fused from "
          f"{len(args.predictions)} files ({args.method})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
