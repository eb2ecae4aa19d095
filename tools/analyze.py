#!/usr/bin/env python
"""Recall broken down by query template, GT window length, clip duration and window position;
the worst queries; several runs side by side.

    python tools/analyze.py PREDICTIONS.json [MORE.json ...] --gt nlq_val.json --out REPORT_DIR
                            [--names A B ...] [--worst 20] [--no-charts] [--debug]

Writes REPORT_DIR/report.md, CSV tables under REPORT_DIR/tables/ and PNG charts under
REPORT_DIR/charts/. The first file is the baseline the others are compared with. Recall is the
official metric (libs/evaluation/metrics.py). Charts need matplotlib (pip install -e .[viz]);
--no-charts writes the tables and report without it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.errors import ConfigError  # noqa: E402

from libs.utils.cli import run_command  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pred", nargs="+", help="prediction or submission files (the first is the baseline)")
    parser.add_argument("--gt", required=True, help="official NLQ json of the split (or its jsonl records)")
    parser.add_argument("--out", required=True, help="report folder (created)")
    parser.add_argument("--names", nargs="+", default=None, help="run names, one per file (default: file names)")
    parser.add_argument("--worst", type=int, default=20, help="worst queries listed per run")
    parser.add_argument("--no-charts", action="store_true", help="tables and report only (no matplotlib needed)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    from libs.evaluation.analysis import write_report

    if args.worst < 0:
        raise ConfigError(f"--worst {args.worst}: expected 0 or more")
    report = write_report(args.pred, args.gt, args.out, names=args.names, worst=args.worst,
                          charts=not args.no_charts)
    print(f"wrote {report}")
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
