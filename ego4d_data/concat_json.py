"""Concatenate the converted train and val annotations into ego4d_nlq_train+val_v2.jsonl.

    python ego4d_data/concat_json.py --input-dir ego4d_data --output-dir ego4d_data

Train lines first, then val lines, as the reference. Used by the test-submission model, which
trains on train+val. A thin wrapper over libs.datasets.annotations.concat_jsonl.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.errors import DataError  # noqa: E402

from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.annotations import concat_jsonl  # noqa: E402

INPUT_NAMES = ("ego4d_nlq_train_v2.jsonl", "ego4d_nlq_val_v2.jsonl")
OUTPUT_NAME = "ego4d_nlq_train+val_v2.jsonl"


def concat_train_val(input_dir: str, output_dir: str) -> str:
    """Write ``OUTPUT_NAME`` in ``output_dir`` from the two converted splits; returns its path."""
    paths = [os.path.join(input_dir, name) for name in INPUT_NAMES]
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"missing {path}: run ego4d_data/reformat_data.py first")
    out_path = os.path.join(output_dir, OUTPUT_NAME)
    count = concat_jsonl(paths, out_path)
    print(f"train+val: {count} records -> {out_path}")
    return out_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-dir", "--input_dir", dest="input_dir", default=".", help="folder holding the converted train/val jsonl")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None, help="where to write the result (default: --input-dir)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)
    return run_command(lambda: concat_train_val(args.input_dir, args.output_dir or args.input_dir), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
