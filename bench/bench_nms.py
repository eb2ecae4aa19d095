"""Time ``batched_nms`` per backend on model-like candidates, full run versus early stop.

Prints a table of the median milliseconds per call, then one JSON line with every number:

    python bench/bench_nms.py                        # N = 500, 2000, 5000; every usable backend
    python bench/bench_nms.py --sizes 2000 --repeats 20 --backends cpp torch

Inputs imitate the decoder's output for one query: grid candidates of several pyramid levels
(lengths a few strides long), scores from logits near the classifier prior, so most candidates
are weak, a few strong and overlapping. Settings are the finetune config's test_cfg (gaussian
soft NMS, sigma 0.75, IoU 0.1, min_score 0.001, 5 results, per-class).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from libs.utils.nms import available_backends, batched_nms  # noqa: E402

NMS_CFG = dict(iou_threshold=0.1, min_score=0.001, max_seg_num=5, use_soft_nms=True,
               multiclass=True, sigma=0.75, voting_thresh=0.9)


def model_like_candidates(num: int, seed: int, length: int = 2560, levels: int = 7):
    """``num`` decoded candidates over a ``length``-long grid, levels concatenated like the model's."""
    gen = torch.Generator().manual_seed(seed)
    level = torch.randint(0, levels, (num,), generator=gen)  # (N,)
    stride = 2.0 ** level.float()
    centre = torch.rand(num, generator=gen) * length
    half = stride[:, None] * torch.exp(torch.rand(num, 2, generator=gen) * 2.0)  # (N, 2) left, right
    segs = torch.stack([centre - half[:, 0], centre + half[:, 1]], dim=1)  # (N, 2)
    logits = torch.randn(num, generator=gen) * 1.5 - 4.6  # prior 0.01
    scores = torch.sigmoid(logits).clamp_min(0.0011)  # the decoder keeps > 0.001
    order = torch.argsort(level * 10 - scores, stable=True)  # by level, descending within one
    labels = torch.zeros(num, dtype=torch.long)
    return segs[order].contiguous(), scores[order].contiguous(), labels


def median_ms(fn, repeats: int, sync) -> float:
    fn()  # warm up (first CUDA launch, allocator)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per cell (median)")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every usable one")
    parser.add_argument("--torch-full-max", type=int, default=2000,
                        help="skip the torch backend's O(N^2) full run above this N (seconds per call)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    backends = args.backends or available_backends()
    rows = []
    for num in args.sizes:
        segs, scores, labels = model_like_candidates(num, args.seed)
        for backend in backends:
            device = torch.device("cuda" if backend == "cuda" else "cpu")
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            s, sc, lb = segs.to(device), scores.to(device), labels.to(device)
            for early_stop in (False, True):
                if backend == "torch" and not early_stop and num > args.torch_full_max:
                    continue
                ms = median_ms(lambda: batched_nms(s, sc, lb, **NMS_CFG, backend=backend, early_stop=early_stop),
                               args.repeats, sync)
                rows.append({"n": num, "backend": backend, "early_stop": early_stop, "median_ms": round(ms, 4)})

    print(f"{'N':>6} {'backend':>8} {'full (ms)':>12} {'early stop (ms)':>16}")
    for num in args.sizes:
        for backend in backends:
            cells = {r["early_stop"]: r["median_ms"] for r in rows if r["n"] == num and r["backend"] == backend}
            full = f"{cells[False]:.3f}" if False in cells else "skipped"
            early = f"{cells[True]:.3f}" if True in cells else "-"
            print(f"{num:>6} {backend:>8} {full:>12} {early:>16}")
    device_name = torch.cuda.get_device_name() if "cuda" in backends else "cpu"
    summary = {"bench": "nms", "device": device_name, "threads": torch.get_num_threads(),
               "repeats": args.repeats, "settings": NMS_CFG, "results": rows}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
