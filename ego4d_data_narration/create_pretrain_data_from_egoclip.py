"""Build the narration pretraining annotations (narrations as queries) from EgoClip.

    python ego4d_data_narration/create_pretrain_data_from_egoclip.py \
        --egoclip egoclip.csv \
        --split-files nlq_train.json moments_train.json vq_train.json \
        --video-feat-dir data/features/em_egovlp+internvideo_visual_features_1.87fps \
        --output data/narrations/format_unique_pretrain_data_v2.jsonl

Replaces the reference's create_pretrain_data_from_egoclip.py + filter_missing_video.py: clips
without video features (given a feature store or a list of clip ids) are dropped here, and each
dropped clip is reported. A thin wrapper over ego4d_data_narration/narration_builder.py.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ego4d_data_narration.narration_builder import build_pretrain_records, read_id_list  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.annotations import QUERY_TYPES, write_jsonl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--egoclip", required=True, help="EgoClip metadata (egoclip.csv, tab-separated)")
    parser.add_argument("--split-files", "--split_files", dest="split_files", nargs="+", required=True,
                        help="official train split jsons (NLQ, MQ, VQ) whose clips get narration queries")
    features = parser.add_mutually_exclusive_group()
    features.add_argument("--video-feat-dir", "--video_feat_dir", dest="video_feat_dir", help="video feature store; clips missing from it are dropped")
    features.add_argument("--available-clips", "--available_clips", dest="available_clips", help="text file of clip ids with features, one per line")
    parser.add_argument("--output", required=True, help="jsonl to write")
    parser.add_argument("--query-type", "--query_type", dest="query_type", default="narration", choices=QUERY_TYPES,
                        help="query_type of the records (default: narration)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)
    return run_command(lambda: build(args), debug=args.debug)


def build(args: argparse.Namespace) -> None:
    """Build the narration jsonl the arguments describe."""
    available = None
    if args.available_clips:
        available = read_id_list(args.available_clips)
    elif args.video_feat_dir:
        from libs.datasets.feature_store import open_store

        available = set(open_store(args.video_feat_dir).keys())
    records = build_pretrain_records(args.egoclip, args.split_files, available, args.query_type)
    write_jsonl(records, args.output, line_ending="\n")  # the reference's narration file has LF breaks
    print(f"wrote {len(records)} records -> {args.output}")


if __name__ == "__main__":
    sys.exit(main())
