#!/usr/bin/env python
"""How much faster ``Grounder.ground_many`` is than ``ground`` per question (same windows).

    python bench/bench_grounder.py [--config configs/demo_worded.yaml] [--questions 16] [--repeats 3]
                                   [--clip-features 898] [--threads 1] [--device cpu]

The model of the config with random weights (speed does not depend on them), one clip of random
features (898 = a 480 s Ego4D clip), and the config's text encoder (MiniLM: the text extra) or,
with ``--toy-encoder``, random word features. Prints per-question times, the ratio and whether
both paths gave the same windows.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.config import load_config  # noqa: E402
from libs.datasets.text_encoders import TextEncoder, make_text_encoder  # noqa: E402
from libs.modeling.models import make_meta_arch  # noqa: E402
from libs.predict import Grounder  # noqa: E402

QUESTIONS = (
    "Where did I put the scissors?", "Where is my phone?", "How many times did I wash the pan?",
    "What color is the bucket?", "Did I leave the laptop open?", "Where was the knife before I picked it?",
    "In what location did I see the keys?", "What did I put in the bowl?",
    "Who did I talk to when I was holding the drill?", "Where was the wallet?",
)


class ToyEncoder(TextEncoder):
    """Random word features of a given width (no text extra needed)."""

    name = "toy"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def _encode_batch(self, texts):
        return [np.stack([np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim)
                          for w in text.split()]).astype(np.float32) for text in texts]


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls, after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo_worded.yaml")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip-features", type=int, default=898)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--toy-encoder", action="store_true", help="random word features instead of MiniLM")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_config(args.config)
    model = make_meta_arch(cfg["model_name"], **cfg["model"]).to(args.device)
    dataset_cfg = cfg["dataset"]
    if args.toy_encoder:
        encoder = ToyEncoder(dataset_cfg["input_txt_dim"])
    else:
        encoder = make_text_encoder(dataset_cfg["text_encoder"], device=args.device)
    grounder = Grounder(model, encoder, fps=dataset_cfg["default_fps"], feat_stride=dataset_cfg["feat_stride"],
                        num_frames=dataset_cfg["num_frames"])
    clip = np.random.default_rng(0).standard_normal((args.clip_features, dataset_cfg["input_vid_dim"]))
    clip = clip.astype(np.float32)  # (T, C_v)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.questions)]

    one_by_one = timed(lambda: [grounder.ground(clip, q) for q in questions], args.repeats)
    batched = timed(lambda: grounder.ground_many(clip, questions), args.repeats)
    same = all(
        np.allclose(a.windows(), b.windows(), atol=1e-4) and np.allclose(a.scores(), b.scores(), atol=1e-5)
        for a, b in zip([grounder.ground(clip, q) for q in questions], grounder.ground_many(clip, questions))
    )
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu, {args.threads} thread(s)"
    print(f"{args.config}: {args.questions} questions, clip of {args.clip_features} features, "
          f"encoder {encoder.name}, {device}")
    print(f"ground per question: {1000 * one_by_one / len(questions):7.1f} ms/question")
    print(f"ground_many:         {1000 * batched / len(questions):7.1f} ms/question")
    print(f"speed-up: {one_by_one / batched:.2f}x   same windows: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
