"""Convert the official Ego4D NLQ v2 json files into this project's jsonl annotations.

    python ego4d_data/reformat_data.py --input-file-dir ego4d_data/ego4d_nlq_v2_ori_data \
        --output-dir ego4d_data

Converts whichever of nlq_train.json, nlq_val.json, nlq_test_unannotated.json exist into
ego4d_nlq_{train,val,test}_v2.jsonl and prints one summary line per split. The output equals
the reference's shipped files byte for byte. A thin wrapper over libs.datasets.annotations.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.errors import DataError  # noqa: E402

from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.annotations import (  # noqa: E402
    OFFICIAL_SPLIT_FILES, convert_official_file, format_summary, write_jsonl)


def output_name(split: str) -> str:
    """The reference's file name for a converted split."""
    return f"ego4d_nlq_{split}_v2.jsonl"


def convert_folder(input_dir: str, output_dir: str) -> list[dict]:
    """Convert every official split file found in ``input_dir``; returns the summaries."""
    if not os.path.isdir(input_dir):
        raise DataError(f"--input-file-dir {input_dir} is not a folder")
    found = {split: os.path.join(input_dir, name) for split, name in OFFICIAL_SPLIT_FILES.items()
             if os.path.isfile(os.path.join(input_dir, name))}
    if not found:
        raise DataError(f"--input-file-dir {input_dir} holds none of {sorted(OFFICIAL_SPLIT_FILES.values())}")
    summaries = []
    for split, path in found.items():
        records, summary = convert_official_file(path, split)
        out_path = os.path.join(output_dir, output_name(split))
        write_jsonl(records, out_path)
        summary["output"] = out_path
        print(f"{format_summary(summary)} -> {out_path}")
        summaries.append(summary)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-file-dir", "--input_file_dir", dest="input_file_dir", required=True, help="folder holding the official nlq_*.json files")
    parser.add_argument("--output-dir", "--output_dir", dest="output_dir", default=".", help="where to write ego4d_nlq_*_v2.jsonl (default: .)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)
    return run_command(lambda: convert_folder(args.input_file_dir, args.output_dir), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
