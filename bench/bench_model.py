"""Model benchmark: reference mode versus fast mode on the finetune config (random weights).

Usage (from the repository root)::

    python bench/bench_model.py            # full: median of 3 repeats after two warm-up steps
    python bench/bench_model.py --quick    # within ~3 minutes on 2 cores
    python bench/bench_model.py --device cuda --amp bf16   # on a GPU, bf16 autocast

Each (task, mode) runs in a fresh subprocess, one after another, so that its peak resident
memory is its own: ``peak_mb`` = ``ru_maxrss`` at the end minus ``ru_maxrss`` after the model,
optimizer and inputs were built (torch CPU tensors live in the process heap, so this is the
memory the steps themselves needed; tracemalloc does not see torch allocations). With
``--device cuda`` it is the CUDA allocator's peak above what was allocated before the steps,
and step times are taken after ``torch.cuda.synchronize()``.

Modes (real-length inputs: clips of ``--clip-len`` x 2304 features, ``--queries`` queries per
clip with 9-15 text tokens x 512):

* ``reference``: ``configs/modes/reference.yaml`` over the config, everything as the reference
  runs it: video padded to ``max_seq_len``, text
  padded to the batch's longest query, explicit softmax attention, the reference's local
  attention algorithm (``local_attn_impl: chunked``, overlapping chunks), soft NMS over every
  candidate with the C++ backend, the regression head over every point in training, one query
  per sample (each query gets its own video row, as the reference reads and embeds the clip
  once per query), the reference's eval batch of 16.
* ``fast``: the defaults: exact padding with trimmed pyramid levels, text padded by at least
  one column, SDPA, block-GEMM local attention, NMS early stop, the regression head only around
  the positive points in training (``sparse_reg_head``), the queries of a clip in one
  batch sharing one video row (embedding and first stem self-attention once per clip).

Training step = forward, loss, backward, gradient clipping (1.0), AdamW, at the same number of
queries per step in both modes (``--train-queries``, default 2 = the config's batch size; fast:
two queries of one clip). Inference = forward, decoding and NMS: fast, one clip's ``--queries``
queries in one batch; reference, timed twice: ``--reference-eval-batch`` (16) queries of
consecutive clips, one row each (the reference's eval batch; ``--quick``: warm-up and FLOP count
on its first query, one timed batch), and one query per call (how the reference runs fastest
per query on a CPU: no padding to the batch's longest text, a smaller working set). The
inference baseline is the faster of the two per query; the JSON names it
(``infer_reference_baseline``) and keeps both rates.
``max_abs_diff`` = the largest absolute difference between the two modes'
head outputs (logits and offsets) over valid positions of the inference queries whose text both
runs padded (the reference batch leaves its longest query unpadded, which changes that query's
outputs by design, spec 5.6); LayerScale weights are drawn from U(0.5, 1.5) as in the golden
fixtures, so that attention and text reach the outputs. GFLOPs are
counted with ``torch.utils.flop_counter`` (matmuls, convolutions, attention) on the warm-up step.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CONFIG = os.path.join(ROOT, "configs", "ego4d_nlq_v2_pretrain_finetune_internvideo_2.5e-5.yaml")


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and reference queries (< 3 min)")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none",
                        help="bf16 autocast around forward and loss (both modes)")
    parser.add_argument("--clip-len", type=int, default=900, help="video features per clip")
    parser.add_argument("--queries", type=int, default=11, help="queries per clip (inference batch)")
    parser.add_argument("--train-queries", type=int, default=2, help="queries per training step")
    parser.add_argument("--reference-eval-batch", type=int, default=16,
                        help="queries per reference inference batch (the reference's eval batch size)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, quick 2)")
    parser.add_argument("--json-out", default=None, help="also write the JSON summary here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "<task>:<mode>:<out.pt>"
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- inputs and model
def make_clip_queries(clip: int, num_queries: int, clip_len: int, share_video: bool) -> List[Dict[str, Any]]:
    """Dataset items (reference layout) of one synthetic clip: N(0, 1) features, one GT window per
    query. ``share_video=False`` gives every query its own video id (one row each, as the reference)."""
    import torch

    gen = torch.Generator().manual_seed(1000 + clip)
    feats = torch.randn(2304, clip_len, generator=gen)  # (C_v, T)
    items = []
    for q in range(num_queries):
        start = float(torch.randint(0, clip_len - 40, (1,), generator=gen))
        length = float(torch.randint(2, 40, (1,), generator=gen))
        tokens = int(torch.randint(9, 16, (1,), generator=gen))
        items.append({
            "video_id": f"clip{clip}" if share_video else f"clip{clip}#q{q}",
            "feats": feats, "fps": 30, "duration": clip_len * 16.043 / 30,
            "feat_stride": 16.043, "feat_num_frames": 16.043,
            "segments": torch.tensor([[start, start + length]], dtype=torch.float64),
            "one_hot_labels": torch.ones(1, 1, dtype=torch.int64),
            "query_id": f"clip{clip}_{q}", "query": "",
            "query_feats": torch.randn(512, tokens, generator=gen),  # (C_t, L)
        })
    return items


def build_model(config: str, mode: str):
    import torch

    from libs.core.config import load_config
    from libs.modeling import make_meta_arch

    # fast mode is the defaults; reference mode is configs/modes/reference.yaml over the config
    cfg = load_config(config, mode="reference" if mode == "reference" else None)
    torch.manual_seed(0)  # same random weights in both modes
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    # LayerScale starts at 1e-4, which would hide attention and text from the output comparison;
    # U(0.5, 1.5) as in the golden fixtures makes max_abs_diff see every branch
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("drop_path_attn.scale", "drop_path_mlp.scale")):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
    return model, cfg


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_worker(args: argparse.Namespace) -> None:
    """One (task, mode) measurement in this process; prints one JSON line."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from libs.evaluation.postprocess import results_of_heads
    from libs.utils.amp import autocast

    task, mode, out_path = args.worker.split(":", 2)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, cfg = build_model(args.config, mode)
    model.to(device)
    collate = model.collator(is_training=task == "train")  # the loader's job in a run: part of the step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # the FLOP-counted step runs through Python dispatch and leaves the next step cold (measured:
    # 7.4 s then 5.8 s for a reference training step): one plain step more before timing
    warmup = 2
    repeats = args.repeats or (2 if args.quick else 3)
    # --quick, reference inference: a batch of 16 at T = 2560 takes ~30 s, so warm up (and count
    # FLOPs) on its first query alone and time one batch (per-query FLOPs do not depend on the
    # batch at a fixed T, up to the query's text length)
    quick_reference_infer = args.quick and not args.repeats and task == "infer" and mode == "reference"
    if quick_reference_infer:
        repeats = 1
    result: Dict[str, Any] = {"task": task, "mode": mode}

    if task == "train":
        model.train()
        if mode == "fast":  # video-centric: the step's queries come from one clip
            items = make_clip_queries(0, args.train_queries, args.clip_len, share_video=True)
        else:  # reference: random queries, i.e. different clips
            items = [make_clip_queries(c, 1, args.clip_len, share_video=False)[0] for c in range(args.train_queries)]
        opt_cfg = cfg["opt"]
        # the reference's default per-parameter AdamW loop; fast mode: the fused kernel (opt.fused)
        optimizer = torch.optim.AdamW(model.parameters(), lr=opt_cfg["learning_rate"],
                                      weight_decay=opt_cfg["weight_decay"], fused=True if mode == "fast" else None)
        clip = float(cfg["train_cfg"]["clip_grad_l2norm"])

        def step() -> None:
            batch = collate(items).to(device)  # collate is part of the step (reference pads here)
            with autocast(device, args.amp):
                losses = model(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["final_loss"].backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()

        queries_per_step = len(items)
    else:
        model.eval()
        if mode == "fast":  # one clip's queries, one video row
            items = make_clip_queries(0, args.queries, args.clip_len, share_video=True)
        else:  # the reference's eval batch: consecutive queries (of consecutive clips), one row each
            items, clip = [], 0
            while len(items) < args.reference_eval_batch:
                items += make_clip_queries(clip, args.queries, args.clip_len, share_video=False)
                clip += 1
            items = items[: args.reference_eval_batch]
        captured: Dict[str, Any] = {}

        @torch.no_grad()
        def step(queries: List[Dict[str, Any]] = items) -> None:
            batch = collate(queries).to(device)
            with autocast(device, args.amp):
                heads = model(batch)
                results_of_heads(heads, batch.meta, model.test_cfg)
            captured["heads"], captured["masks"] = heads, batch

        queries_per_step = len(items)

    def peak_mb() -> float:  # the high-water mark so far, process heap or CUDA allocator
        return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else maxrss_mb()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else maxrss_mb()
    flops = FlopCounterMode(display=False)
    with flops:
        if quick_reference_infer:
            step(items[:1])  # warm-up, counted
        else:
            step()  # warm-up, counted
    for _ in range(warmup - 1):
        step(items[:1]) if quick_reference_infer else step()
    times, cpu_times = [], []
    for _ in range(repeats):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    result.update(
        step_s=statistics.median(times),
        step_times_s=[round(t, 4) for t in times],
        # CPU seconds of this process: with --threads 1 it leaves out the time other processes
        # held the core, so ratios of it are steadier on a shared machine
        step_cpu_s=statistics.median(cpu_times),
        queries_per_step=queries_per_step,
        peak_mb=peak_mb() - baseline,
        gflops_per_query=flops.get_total_flops() / 1e9 / (1 if quick_reference_infer else queries_per_step),
        padded_video_length=int(collate(items).videos.shape[-1]),
        level_lengths=model.pyramid_lengths(collate(items).to(device)),
    )
    result["qps"] = queries_per_step / result["step_s"]
    result["achieved_gflops_per_s"] = result["gflops_per_query"] * result["qps"]
    if task == "infer":
        heads = captured["heads"]
        valid = [(m[..., None] > 0) for m in heads.fpn_masks]
        torch.save({
            "query_ids": [str(m["query_id"]) for m in captured["masks"].meta],
            "cls_logits": [(x * v).detach().float().cpu() for x, v in zip(heads.cls_logits, valid)],
            "offsets": [(x * v).detach().float().cpu() for x, v in zip(heads.offsets, valid)],
            "masks": [m.detach().cpu() for m in heads.fpn_masks],
            # the reference's outputs depend on whether a query's text was padded (spec 5.6)
            "text_padded": (~captured["masks"].text_masks[:, 0, -1]).cpu().tolist(),
        }, out_path)
    print(json.dumps(result), flush=True)


def max_abs_diff(path_a: str, path_b: str) -> float:
    """Largest |a - b| of head outputs over positions valid in both runs (queries matched by id,
    text padded in both)."""
    import torch

    a, b = torch.load(path_a), torch.load(path_b)
    rows_b = {qid: i for i, qid in enumerate(b["query_ids"])}
    worst = 0.0
    for i, qid in enumerate(a["query_ids"]):
        if qid not in rows_b:
            continue
        j = rows_b[qid]
        if not (a["text_padded"][i] and b["text_padded"][j]):
            continue  # unpadded text differs by design (reference batching), not by the fast paths
        for key in ("cls_logits", "offsets"):
            for level, (xa, xb) in enumerate(zip(a[key], b[key])):
                length = min(xa.shape[1], xb.shape[1])
                both = (a["masks"][level][i, :length] & b["masks"][level][j, :length])[:, None]
                worst = max(worst, float(((xa[i, :length] - xb[j, :length]) * both).abs().max()))
    return worst


# ---------------------------------------------------------------------------- driver
def machine_info(device: str) -> Dict[str, Any]:
    import torch

    model_name = platform.processor() or "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {"cpu": model_name, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg()}


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return {}
    info = machine_info(args.device)
    print(f"# {info['gpu'] or info['cpu']}, {info['cores']} cores, torch {info['torch']}, {info['date']}, "
          f"load {info['loadavg_start']}, threads {args.threads}, device {args.device}, amp {args.amp}", flush=True)
    runs: Dict[str, Dict[str, Any]] = {}
    # (run name, task, mode, reference eval batch): the reference's inference timed both ways
    measurements = [("train_reference", "train", "reference", args.reference_eval_batch),
                    ("train_fast", "train", "fast", args.reference_eval_batch),
                    ("infer_reference", "infer", "reference", args.reference_eval_batch),
                    ("infer_reference_1", "infer", "reference", 1),
                    ("infer_fast", "infer", "fast", args.reference_eval_batch)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, task, mode, eval_batch in measurements:
            out = os.path.join(tmp, f"{name}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"{task}:{mode}:{out}",
                   "--config", args.config, "--threads", str(args.threads), "--clip-len", str(args.clip_len),
                   "--device", args.device, "--amp", args.amp,
                   "--queries", str(args.queries), "--train-queries", str(args.train_queries),
                   "--reference-eval-batch", str(eval_batch)]
            if args.quick:
                cmd.append("--quick")
            if args.repeats:
                cmd += ["--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"bench worker {task}:{mode} failed (exit {proc.returncode})")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[name] = run
            print(f"{name:17s}: {run['step_s']:.3f} s/step ({run['step_cpu_s']:.3f} CPU s; "
                  f"{run['queries_per_step']} queries, "
                  f"T={run['padded_video_length']}, levels {run['level_lengths'] or 'T / s'}), {run['qps']:.3f} queries/s, peak +{run['peak_mb']:.0f} MB, "
                  f"{run['gflops_per_query']:.1f} GFLOP/query, {run['achieved_gflops_per_s']:.1f} GFLOP/s",
                  flush=True)
        diff = max_abs_diff(os.path.join(tmp, "infer_fast.pt"), os.path.join(tmp, "infer_reference.pt"))
    baseline = max(("infer_reference", "infer_reference_1"), key=lambda name: runs[name]["qps"])
    summary = {
        "train_speedup": runs["train_fast"]["qps"] / runs["train_reference"]["qps"],
        "infer_speedup": runs["infer_fast"]["qps"] / runs[baseline]["qps"],
        "infer_reference_baseline": ("one query per call" if baseline == "infer_reference_1"
                                     else f"batches of {args.reference_eval_batch}"),
        "infer_qps_reference_batched": runs["infer_reference"]["qps"],
        "infer_qps_reference_one_per_call": runs["infer_reference_1"]["qps"],
        "train_step_s_fast": runs["train_fast"]["step_s"],
        "train_step_s_reference": runs["train_reference"]["step_s"],
        "infer_qps_fast": runs["infer_fast"]["qps"],
        "infer_qps_reference": runs[baseline]["qps"],
        "train_peak_mb_fast": runs["train_fast"]["peak_mb"],
        "train_peak_mb_reference": runs["train_reference"]["peak_mb"],
        "max_abs_diff": diff,
        "train_speedup_cpu_time": (runs["train_reference"]["step_cpu_s"] / runs["train_reference"]["queries_per_step"])
        / (runs["train_fast"]["step_cpu_s"] / runs["train_fast"]["queries_per_step"]),
        "infer_speedup_cpu_time": (runs[baseline]["step_cpu_s"] / runs[baseline]["queries_per_step"])
        / (runs["infer_fast"]["step_cpu_s"] / runs["infer_fast"]["queries_per_step"]),
        "infer_peak_mb_fast": runs["infer_fast"]["peak_mb"],
        "infer_peak_mb_reference": runs[baseline]["peak_mb"],
        "gflops_per_query": {k: round(v["gflops_per_query"], 2) for k, v in runs.items()},
        "achieved_gflops_per_s": {k: round(v["achieved_gflops_per_s"], 2) for k, v in runs.items()},
        "machine": {**info, "loadavg_end": os.getloadavg(), "threads": args.threads,
                    "device": args.device, "amp": args.amp},
        "quick": args.quick,
    }
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
