"""Video feature extraction: frames per second and peak memory, per backbone, on this machine.

Usage (from the repository root)::

    python bench/bench_extraction.py            # a 40 s 640x360 30 fps video
    python bench/bench_extraction.py --quick    # 12 s
    python bench/bench_extraction.py --device cuda --amp bf16

A synthetic video (moving coloured shapes over noise, MPEG-4) is written once; each backbone then
extracts it in a fresh subprocess (so ``peak_mb``, the growth of ``ru_maxrss`` during extraction,
is its own) on the reference's grid: 30 fps, stride 16, 16 frames per feature, i.e. every frame
of a 30 fps video is decoded, scaled and encoded. Rows:

* ``decode``: the ``thumbnail`` backbone (an average of 8x8 frames: the cost of decoding,
  scaling and the extraction loop alone);
* ``clip``: CLIP ViT-B/32's image tower (``transformers``), seeded random weights: the same
  computation as the real weights; with ``--amp bf16`` also under bf16 autocast.

``frames_per_s`` counts grid frames (video frames here); ``hour_min`` = minutes one hour of 30 fps
video takes at that rate. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

WIDTH, HEIGHT, FPS = 640, 360, 30
GRID = dict(fps=30.0, feat_stride=16.0, num_frames=16)


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 12 s video instead of 40 s")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="also time clip under bf16 autocast")
    parser.add_argument("--batch-size", type=int, default=4, help="windows (of 16 frames) per backbone call")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "<row>:<video>:<out.json>"
    return parser.parse_args(argv)


def write_test_video(path: str, seconds: float) -> None:
    """Noise background with three moving discs, MPEG-4 at 640x360, 30 fps."""
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    background = rng.integers(60, 190, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = WIDTH, HEIGHT, "yuv420p", 2_000_000
        for n in range(int(seconds * FPS)):
            frame = background.copy()
            for k, colour in enumerate([(220, 40, 40), (40, 200, 60), (40, 60, 230)]):
                cx, cy = (n * (3 + k) + 150 * k) % WIDTH, HEIGHT / 2 + 80 * np.sin(n / 30 + k)
                frame[(x - cx) ** 2 + (y - cy) ** 2 < 40 ** 2] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(args: argparse.Namespace) -> None:
    import torch

    from libs.video.backbones import make_video_backbone
    from libs.video.extract import extract_features
    from libs.video.grid import FeatureGrid

    row, video, out = args.worker.split(":", 2)
    torch.set_num_threads(args.threads)
    name, _, amp = row.partition("+")
    backbone = (make_video_backbone("thumbnail", device=args.device) if name == "decode"
                else make_video_backbone("clip", random_init_seed=0, device=args.device))
    grid = FeatureGrid(**GRID)
    before = maxrss_mb()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    features, duration = extract_features(video, backbone, grid, batch_size=args.batch_size, amp=amp or None)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    frames = features.shape[0] * grid.num_frames
    result = {"row": row, "features": int(features.shape[0]), "frames": frames, "seconds": round(seconds, 2),
              "frames_per_s": round(frames / seconds, 1), "hour_min": round(FPS * 3600 / (frames / seconds) / 60, 1),
              "peak_mb": round(maxrss_mb() - before, 1)}
    if args.device.startswith("cuda"):
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    with open(out, "w") as f:
        json.dump(result, f)


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    seconds = 12.0 if args.quick else 40.0
    rows = ["decode", "clip"] + (["clip+bf16"] if args.amp == "bf16" else [])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "bench.mp4")
        write_test_video(video, seconds)
        print(f"video: {seconds:.0f} s, {WIDTH}x{HEIGHT}, {FPS} fps, MPEG-4; grid {GRID}; "
              f"{args.threads} threads, device {args.device}")
        for row in rows:
            out = os.path.join(tmp, f"{row}.json")
            command = [sys.executable, os.path.abspath(__file__), "--worker", f"{row}:{video}:{out}",
                       "--threads", str(args.threads), "--device", args.device, "--batch-size", str(args.batch_size)]
            subprocess.run(command, check=True)
            with open(out) as f:
                result = json.load(f)
            results.append(result)
            print(f"{row:>10}: {result['frames_per_s']:8.1f} frames/s  peak {result['peak_mb']:7.1f} MB  "
                  f"one hour of 30 fps video: {result['hour_min']:.1f} min")
    summary = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
               "device": args.device, "video_s": seconds, "rows": results}
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
