"""Decode videos and write one ``(T, C)`` feature array per video into a feature store.

    python feature_extraction/extract_video_features.py --videos my_videos/ --dst data/features/clip.h5 \\
        --backbone clip --clip-weights ViT-B-32.pt --config configs/my_model.yaml

Feature ``i`` covers the grid frames ``[i * feat_stride, i * feat_stride + num_frames)`` at
``fps`` (from ``--config``'s dataset section, or ``--fps/--feat-stride/--num-frames``), whatever
the file's own frame rate. Ids are file names without extension. Resumable: videos the store
holds are skipped; ``<dst>.videos.json`` records the grid, the backbone and every video's
duration. A bad video (unreadable, empty, no video stream, truncated) stops the run with one line
naming the file, unless ``--skip-bad`` (then it is listed at the end and the next one goes on).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.errors import ConfigError  # noqa: E402
from libs.datasets.store_append import add_destination_arguments  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402
from libs.video.backbones import VIDEO_BACKBONES, make_video_backbone  # noqa: E402
from libs.utils.amp import AMP_CHOICES  # noqa: E402
from libs.video.extract import DEFAULT_BATCH_SIZE, extract_to_store  # noqa: E402
from libs.video.grid import FeatureGrid  # noqa: E402


def grid_from_args(args: argparse.Namespace) -> FeatureGrid:
    """The grid of ``--config`` (its dataset section) with any of ``--fps/--feat-stride/--num-frames`` on top."""
    values = {}
    if args.config:
        from libs.core.config import load_config

        config_grid = FeatureGrid.from_config(load_config(args.config))
        values = dict(fps=config_grid.fps, feat_stride=config_grid.feat_stride, num_frames=config_grid.num_frames)
    for key in ("fps", "feat_stride", "num_frames"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    missing = [f"--{k.replace('_', '-')}" for k in ("fps", "feat_stride", "num_frames") if k not in values]
    if missing:
        raise ConfigError(f"the feature grid needs {', '.join(missing)} (or --config with a dataset "
                          f"section that sets default_fps, feat_stride, num_frames)")
    return FeatureGrid(**values)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", required=True, help="video files and/or folders of videos")
    add_destination_arguments(parser)
    parser.add_argument("--backbone", default="clip", choices=VIDEO_BACKBONES.names())
    parser.add_argument("--clip-weights", default=None, help="OpenAI CLIP weights file (ViT-B-32.pt)")
    parser.add_argument("--random-init-seed", type=int, default=None,
                        help="clip: seeded random ViT-B/32 weights instead of a file (offline demos, tests)")
    parser.add_argument("--config", default=None, help="model config whose dataset section gives the grid")
    parser.add_argument("--fps", type=float, default=None)
    parser.add_argument("--feat-stride", type=float, default=None)
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per backbone call")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--amp", default="none", choices=AMP_CHOICES, help="autocast the backbone")
    parser.add_argument("--skip-bad", action="store_true", help="report bad videos and go on")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    args = parser.parse_args(argv)

    def run() -> int:
        grid = grid_from_args(args)
        options = dict(device=args.device)
        if args.backbone == "clip":
            options.update(weights_path=args.clip_weights, random_init_seed=args.random_init_seed)
        backbone = make_video_backbone(args.backbone, **options)
        summary = extract_to_store(args.videos, args.dst, backbone, grid, args.dst_kind, args.dtype,
                                   args.batch_size, args.amp, skip_bad=args.skip_bad,
                                   progress=not args.no_progress)
        print(f"{args.backbone} ({backbone.dim}-d, {grid.fps:g} fps, stride {grid.feat_stride:g}, "
              f"{grid.num_frames} frames) -> {args.dst}: wrote {len(summary.written)}, "
              f"skipped {len(summary.already_present)} already present, {len(summary.failed)} bad")
        for path, reason in summary.failed:
            print(f"bad video: {reason}", file=sys.stderr)
        return 1 if summary.failed else 0

    return run_command(run, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
