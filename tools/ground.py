#!/usr/bin/env python
"""Ask questions about a clip with a trained model: prints the windows (start, end, score).

    python tools/ground.py CONFIG CHECKPOINT --clip CLIP_ID --query "where did I put the scissors?"
                           [--query ...] [--features PATH] [--top-k 5] [--ema] [--device DEV]
                           [--clip-weights ViT-B-32.pt] [--plot OUT.png] [--json OUT.json] [--debug]
    python tools/ground.py CONFIG CHECKPOINT --video my_video.mp4 --query "when did I see the red circle?"

The clip is looked up in the config's video store (``dataset.video_feat_dir``) or in ``--features``:
another feature store (HDF5 / LMDB / folder) holding CLIP_ID, or one clip's ``(T, C)`` features in a
``.npy`` / ``.pt`` file (``--clip`` then only names it). Questions are encoded with the text encoder
named in the config (``dataset.text_encoder``; CLIP needs ``--clip-weights``). ``--plot`` draws each
question's timeline (``libs.evaluation.visualize``; one PNG per question when there are several).

``--video`` grounds the questions in a video file: its features are extracted with the backbone
named in the config (``dataset.video_backbone``; CLIP's image tower reads ``--clip-weights`` too)
on the config's feature grid, and cached by the file's content (``--cache-dir``, default
``~/.cache/groundnlq/video_features``), so a second question about the same file starts at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.core.errors import ConfigError, GroundNLQError  # noqa: E402
from libs.utils.amp import AMP_CHOICES  # noqa: E402
from libs.utils.cli import run_command  # noqa: E402
from libs.utils.io import save_json  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="config file the model was trained with (YAML)")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--clip", default=None, help="clip id (clip_uid) in the video feature store")
    parser.add_argument("--video", default=None, metavar="FILE", help="a video file (any format FFmpeg reads)")
    parser.add_argument("--cache-dir", default=None, help="where --video features are cached")
    parser.add_argument("--query", action="append", required=True, help="a question (repeat for several)")
    parser.add_argument("--features", default=None, metavar="PATH",
                        help="video feature store holding the clip, or one clip's .npy/.pt (T, C) features")
    parser.add_argument("--top-k", type=int, default=5, help="windows per question")
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--amp", default="none", choices=AMP_CHOICES,
                        help="run the network under autocast (decoding and NMS stay float32)")
    parser.add_argument("--clip-weights", default=None, metavar="PATH",
                        help="local CLIP weights file, for models trained on CLIP text features")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="draw the timeline(s)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write the answers as JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    return parser.parse_args(argv)


def format_answer(answer, index: int) -> str:
    """One question's table: rank, start, end, score."""
    lines = [f'Q{index}: "{answer.question}"', f"  {'rank':>4}  {'start (s)':>9}  {'end (s)':>9}  {'score':>6}"]
    for rank, m in enumerate(answer.moments, start=1):
        lines.append(f"  {rank:>4}  {m.start:>9.2f}  {m.end:>9.2f}  {m.score:>6.3f}")
    if not answer.moments:
        lines.append("  (no window scored above test_cfg.min_score)")
    return "\n".join(lines)


def plot_paths(out: str, count: int) -> List[str]:
    """``OUT.png`` for one question; ``OUT_q1.png``, ``OUT_q2.png``, ... for several."""
    if count == 1:
        return [out]
    stem, ext = os.path.splitext(out)
    return [f"{stem}_q{i}{ext or '.png'}" for i in range(1, count + 1)]


def draw_timelines(answers, out: str, top_k: int) -> List[str]:
    """Timelines through the reports' visualizer; a clear message (and nothing drawn) without matplotlib."""
    from libs.evaluation import visualize
    from libs.utils.plotting import require_matplotlib

    try:
        require_matplotlib()
    except GroundNLQError as err:
        print(f"--plot skipped: {err}", file=sys.stderr)
        return []
    paths = []
    for i, (answer, path) in enumerate(zip(answers, plot_paths(out, len(answers))), start=1):
        view = visualize.QueryTimeline(
            query_id=f"Q{i}", clip_uid=answer.clip, text=answer.question, template=None,
            duration=answer.duration, gt_window=None, windows=answer.windows(), scores=answer.scores(),
        )
        paths.append(visualize.render_timeline(view, path, top_k=top_k))
    return paths


def run(args: argparse.Namespace) -> list:
    from libs.core.config import load_config
    from libs.predict import Grounder, load_features_file

    if args.video and (args.clip or args.features):
        raise ConfigError("give either --video or --clip/--features, not both")
    clip = args.clip
    video_store = None
    if args.features and args.features.lower().endswith((".npy", ".pt", ".pth")):
        clip = load_features_file(args.features)
    elif args.features:
        video_store = args.features
    if clip is None and not args.video:
        raise ConfigError("expected --clip CLIP_ID, --features FILE.npy|.pt with one clip's features, "
                          "or --video FILE")
    cfg = load_config(args.config, overrides=list(args.opt))
    weights = {"weights_path": args.clip_weights} if args.clip_weights else {}
    grounder = Grounder.from_checkpoint(cfg, args.checkpoint, video_store=video_store, use_ema=args.ema,
                                        device=args.device, encoder_options=weights, amp=args.amp,
                                        backbone_options=weights if cfg["dataset"]["video_backbone"] == "clip" else {})
    if args.video:
        answers = grounder.ground_video(args.video, args.query, top_k=args.top_k, cache_dir=args.cache_dir)
        name = answers[0].clip
    else:
        name = args.clip or os.path.splitext(os.path.basename(args.features))[0]
        answers = grounder.ground_many(clip, args.query, top_k=args.top_k, clip_name=name)
    print(f"clip {name} ({answers[0].duration:.1f} s)")
    for i, answer in enumerate(answers, start=1):
        print(format_answer(answer, i))
    if args.json:
        save_json([a.to_dict() for a in answers], args.json, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        for path in draw_timelines(answers, args.plot, args.top_k):
            print(f"wrote {path}")
    return answers


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
