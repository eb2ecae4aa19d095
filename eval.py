"""Evaluate a checkpoint on the NLQ val/test split, or score a saved prediction file.

    python eval.py CONFIG CHECKPOINT [--split val|test] [--top-k K] [--ema] [--out DIR]
                   [--opt key=value ...] [--device DEV] [--no-progress] [--trust-checkpoint] [--debug]
    python eval.py --pred-file SUBMISSION.json --gt-file nlq_val.json [--json-out METRICS.json]

Model mode writes, into DIR (default: the checkpoint's folder), file names tagged with the split
and the checkpoint's name (a checkpoint folder holds every epoch, so nothing is overwritten):
``<tag>_predictions.json`` (every window with its score: the file to ensemble or re-score),
``<tag>_submission.json`` (EvalAI format, 5 windows per query, validated before writing) and, on
the val split, ``<tag>_metrics.json``. The test split has no GT: its config points
``dataset.val_jsonl_file`` at the test jsonl (as the reference's inference config does) and only
the files are written. The raw weights are evaluated, as the reference does; ``--ema`` picks the
EMA weights. Under ``torchrun --nproc_per_node=N`` (``tools/inference_ego4d_nlq.sh``) each process
evaluates a contiguous block of the split; rank 0 gathers the results (in one process's order),
prints the table and writes the files once.

    python eval.py CONFIG CHECKPOINT [--mode reference]   # reference mode: configs/modes/reference.yaml
"""
from __future__ import annotations

import argparse
import os
import sys

from libs.core.errors import ConfigError

from libs.utils.amp import AMP_CHOICES
from libs.utils.cli import run_command
from libs.utils.io import save_json
from libs.evaluation.metrics import load_ground_truth
from libs.evaluation.submission import (
    SUBMISSION_TOP_K,
    make_submission,
    read_prediction_file,
    save_predictions,
    validate_submission,
)

SPLITS = ("val", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate GroundNLQ on Ego4D NLQ (official recall).")
    parser.add_argument("config", nargs="?", help="config file (model mode)")
    parser.add_argument("checkpoint", nargs="?", help="checkpoint file (model mode)")
    parser.add_argument("--split", default="val", choices=SPLITS,
                        help="val: score and write files; test: write files only (no GT)")
    parser.add_argument("--top-k", "--topk", dest="topk", type=int, default=0, help="windows kept per query (test_cfg.max_seg_num)")
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    parser.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder)")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--mode", default=None, metavar="NAME",
                        help="apply configs/modes/NAME.yaml over the config (reference: the reference's computation)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--amp", default="none", choices=AMP_CHOICES,
                        help="run the network under autocast (decoding and NMS stay float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--pred-file", default=None, help="score this submission/prediction file")
    parser.add_argument("--gt-file", default=None, help="official NLQ json (or jsonl records) for --pred-file")
    parser.add_argument("--json-out", default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle any object in the checkpoint (only for files you made yourself); "
                             "default: weights-only loading")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and where each non-default value came from, then exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def report(predictions: list, gt, title: str) -> dict:
    """Official recall of ``predictions``, printed as the evaluator formats it (R@10 only where
    more than 5 windows per query were kept); returns the metrics."""
    from libs.evaluation.evaluator import RecallEvaluator

    evaluator = RecallEvaluator(gt)
    metrics = evaluator.evaluate(predictions)
    print(evaluator.format(metrics, title=title), flush=True)
    return metrics


def score_file(args: argparse.Namespace) -> dict:
    """``--pred-file`` mode: official scoring of a saved file."""
    if not args.gt_file:
        raise ConfigError("--pred-file needs --gt-file (the official NLQ json of the split)")
    gt = load_ground_truth(args.gt_file)
    metrics = report(read_prediction_file(args.pred_file, gt), gt, title=os.path.basename(args.pred_file))
    if args.json_out:
        save_json({"pred_file": args.pred_file, "gt_file": args.gt_file, **metrics}, args.json_out, indent=2)
    return metrics


def _checkpoint_tag(checkpoint: str, split: str) -> str:
    name = os.path.basename(checkpoint)
    for suffix in (".pth.tar", ".pth", ".pt", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{split}_{name}"


def evaluate_checkpoint(args: argparse.Namespace) -> dict | None:
    """Model mode: dataset + loader, model + checkpoint, inference (split over the processes under
    torchrun), files, metrics."""
    import torch

    from libs.core.config import check_paths_exist, load_config, paths_read, resolve_config
    from libs.utils import comm

    if not os.path.isfile(args.checkpoint):
        raise ConfigError(f"checkpoint not found: {args.checkpoint}")
    overrides = list(args.opt)
    if args.topk:
        if args.topk < SUBMISSION_TOP_K:
            raise ConfigError(f"--top-k {args.topk}: the submission needs at least {SUBMISSION_TOP_K} windows")
        overrides.append(f"test_cfg.max_seg_num={args.topk}")
    if args.split == "test":
        # the test split is read through the evaluation slot of the dataset (as the reference's
        # inference config does); dataset.test_jsonl_file names it, when set
        cfg = load_config(args.config, overrides=list(args.opt), mode=args.mode)
        if cfg["dataset"].get("test_jsonl_file"):
            overrides.append(f"dataset.val_jsonl_file={cfg['dataset']['test_jsonl_file']}")
    cfg, sources = resolve_config(args.config, overrides=overrides, mode=args.mode)
    if not cfg["dataset"].get("val_jsonl_file"):
        raise ConfigError(f"{args.config}: dataset.val_jsonl_file (the split to evaluate) is not set")
    check_paths_exist(cfg, sources, paths_read(cfg, training=False, with_ground_truth=args.split == "val"))
    # under torchrun each process evaluates a contiguous block of the split; rank 0 writes and scores
    device = comm.init_distributed()
    if args.device and comm.get_world_size() == 1:
        device = torch.device(args.device)
    with comm.leave_group_when_done():
        return _evaluate_on(args, cfg, device)


def _evaluate_on(args: argparse.Namespace, cfg: dict, device) -> dict | None:
    from libs.engine.checkpoint import load_checkpoint
    from libs.evaluation.build import build_evaluation
    from libs.evaluation.evaluator import gather_results, inference_on_dataset
    from libs.modeling.models import make_meta_arch
    from libs.utils import comm

    split = build_evaluation(cfg, with_ground_truth=args.split == "val", num_replicas=comm.get_world_size(),
                             rank=comm.get_rank())
    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    load_checkpoint(model, args.checkpoint, use_ema=args.ema, strict=True, trust=args.trust_checkpoint)
    model.to(device)
    results = inference_on_dataset(model, split.loader, device, cfg["test_cfg"],
                                   progress=not args.no_progress and comm.is_main_process(), amp=args.amp)
    results = gather_results(results)  # one process's list, on every process
    if not comm.is_main_process():
        return None

    out_dir = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
    tag = _checkpoint_tag(args.checkpoint, args.split)
    pred_path = os.path.join(out_dir, f"{tag}_predictions.json")
    sub_path = os.path.join(out_dir, f"{tag}_submission.json")
    submission = make_submission(results, SUBMISSION_TOP_K)
    validate_submission(submission, split.records_file)  # before writing anything: no partial outputs
    save_predictions(results, pred_path)
    save_json(submission, sub_path)
    print(f"wrote {pred_path}\nwrote {sub_path}")
    if args.split != "val":
        return None

    gt = split.ground_truth
    metrics = report(results, gt, title=f"{tag} ({'EMA' if args.ema else 'raw'} weights)")
    metrics_path = args.json_out or os.path.join(out_dir, f"{tag}_metrics.json")
    save_json({"checkpoint": os.path.abspath(args.checkpoint), "split": args.split, "ema": args.ema,
               "gt_file": gt.source, **metrics}, metrics_path, indent=2)
    print(f"wrote {metrics_path}")
    return metrics


def run(args: argparse.Namespace) -> dict | None:
    if args.pred_file:
        if args.config or args.checkpoint:
            raise ConfigError("give either CONFIG CHECKPOINT or --pred-file, not both")
        return score_file(args)
    if args.print_config and args.config:
        from libs.core.config import describe_config, resolve_config

        print(describe_config(*resolve_config(args.config, overrides=list(args.opt), mode=args.mode)))
        return None
    if not (args.config and args.checkpoint):
        raise ConfigError("expected CONFIG CHECKPOINT (or --pred-file FILE --gt-file GT)")
    return evaluate_checkpoint(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
