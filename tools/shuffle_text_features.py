"""Ablation control: a copy of a text feature store whose features are permuted across query ids.

A grounding model that really reads the question should lose most of its recall when trained and
evaluated on shuffled text; docs/demo.md reports both numbers for the demo. Usage:

    python tools/shuffle_text_features.py data/demo/text_features.h5 data/demo/text_features_shuffled.h5
    python train.py configs/demo.yaml --output demo_shuffled \
        --opt dataset.text_feat_dir=data/demo/text_features_shuffled.h5 \
              dataset.val_text_feat_dir=data/demo/text_features_shuffled.h5
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.datasets.feature_store import open_store, write_store  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402


def shuffle_text_store(src: str, dst: str, seed: int = 0) -> int:
    """Write ``dst`` with the arrays of ``src`` assigned to a random permutation of its ids."""
    store = open_store(src)
    keys = sorted(store.keys())
    order = np.random.default_rng(seed).permutation(len(keys))
    items = ((key, store[keys[j]]) for key, j in zip(keys, order))
    return write_store(dst, items)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="text feature store (HDF5, LMDB or folder)")
    parser.add_argument("dst", help="output store (same kinds; HDF5 when it ends in .h5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    def run() -> None:
        count = shuffle_text_store(args.src, args.dst, args.seed)
        print(f"wrote {count} shuffled text features to {args.dst}")

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
