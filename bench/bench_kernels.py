"""A/B of fast mode's kernel switches, each against all on, in one process with rounds alternating.

Usage (from the repository root)::

    python bench/bench_kernels.py                  # inference and training, 5 rounds, 2 threads
    python bench/bench_kernels.py --task infer --rounds 8

The switches (``model.fused_layer_norm``, ``model.chunked_mlp``, ``model.text_side_cross_attn``)
keep the numbers to float32 rounding, so they are judged by time alone. One process, one model,
the same inputs (bench_model.py's finetune config with random weights: inference = one 900-feature
clip's 11 queries per call, with decoding and NMS; training = two queries of that clip, forward,
loss, backward, clipping, AdamW); every round runs each variant once, in turn, so that load
drifts hit all of them alike. Prints the median and minimum seconds per step of each variant
and its ratio to "all on"; the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in (ROOT, os.path.join(ROOT, "bench")):
    if folder not in sys.path:
        sys.path.insert(0, folder)

# variant -> (fused_layer_norm, chunked_mlp, text_side_cross_attn)
VARIANTS = {
    "all on": (True, True, True),
    "without fused_layer_norm": (False, True, True),
    "without chunked_mlp": (True, False, True),
    "without text_side_cross_attn": (True, True, False),
    "all off": (False, False, False),
}


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("infer", "train", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def make_step(model, task: str) -> Callable[[], None]:
    import torch

    import bench_model
    from libs.evaluation.postprocess import results_of_heads

    items = bench_model.make_clip_queries(0, 11 if task == "infer" else 2, 900, share_video=True)
    collate = model.collator(is_training=task == "train")
    if task == "infer":
        @torch.no_grad()
        def step() -> None:
            batch = collate(items)
            results_of_heads(model(batch), batch.meta, model.test_cfg)
        return step
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-9, fused=True)

    def train_step() -> None:
        losses = model(collate(items))
        optimizer.zero_grad(set_to_none=True)
        losses["final_loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return train_step


def measure(task: str, rounds: int) -> Dict[str, Dict[str, float]]:
    import bench_model

    model, _ = bench_model.build_model(bench_model.CONFIG, "fast")
    model.train(task == "train")
    step = make_step(model, task)
    times: Dict[str, List[float]] = {name: [] for name in VARIANTS}
    for switches in VARIANTS.values():  # warm-up of every variant
        model.set_fast_kernels(*switches)
        step()
    for _ in range(rounds):
        for name, switches in VARIANTS.items():
            model.set_fast_kernels(*switches)
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["all on"])
    return {name: {"median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
                   "vs_all_on": round(statistics.median(t) / base, 3)} for name, t in times.items()}


def main(argv: List[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from libs.modeling.fused_layer_norm import kernel_available

    summary = {"threads": args.threads, "rounds": args.rounds, "layer_norm_kernel_built": kernel_available(),
               "loadavg_start": os.getloadavg()}
    for task in (("infer", "train") if args.task == "both" else (args.task,)):
        rows = measure(task, args.rounds)
        for name, row in rows.items():
            print(f"{task:5s} {name:30s} median {row['median_s']:.3f} s  min {row['min_s']:.3f} s  "
                  f"{row['vs_all_on']:.2f}x the time of all on", flush=True)
        summary[task] = rows
    summary["loadavg_end"] = os.getloadavg()
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
