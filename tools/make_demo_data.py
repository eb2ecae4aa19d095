#!/usr/bin/env python
"""Write the built-in demo dataset (real Ego4D-NLQ formats, learnable signal) to a folder.

    python tools/make_demo_data.py --out data/demo [--seed 0] [--num-train-clips 48] ...
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.errors import GroundNLQError  # noqa: E402
from libs.datasets.demo import make_demo_data  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo", help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes identical files")
    parser.add_argument("--num-train-clips", type=int, default=48)
    parser.add_argument("--num-val-clips", type=int, default=12)
    parser.add_argument("--num-test-clips", type=int, default=12)
    parser.add_argument("--video-dim", type=int, default=128)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    try:
        meta = make_demo_data(args.out, seed=args.seed, num_train_clips=args.num_train_clips,
                              num_val_clips=args.num_val_clips, num_test_clips=args.num_test_clips,
                              video_dim=args.video_dim, text_dim=args.text_dim)
    except GroundNLQError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"demo data written to {args.out}")
    print(json.dumps(meta["statistics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
