"""Train GroundNLQ: from scratch, narration pretraining, or finetuning a pretrained model.

    torchrun --nproc_per_node=N train.py CONFIG --output NAME [--resume auto|PATH]
             [--pretrained PATH] [--opt key=value ...] [--print-freq N] [--ckpt-freq N]
             [--trust-checkpoint] [--debug]
    python train.py CONFIG ...                      (one process)

The run's folder ``<output_folder>/<config stem>_<NAME>`` receives config.yaml/config.txt,
train.log, metrics.jsonl, TensorBoard events under logs/, eval_results.jsonl, epoch checkpoints
``epoch_XXX.pth.tar``, ``model_best.pth.tar`` and the resumable ``snapshot_last.pth``.

* ``--resume auto``: continue from the newest readable snapshot in the folder (a fresh start when
  there is none), restoring everything (a killed run continues as if uninterrupted).
  ``--resume PATH``: a snapshot, or an epoch checkpoint (weights, EMA, optimizer and schedule;
  starts at the next epoch, as the reference did).
* ``--pretrained PATH``: finetuning. Backbone and neck weights are loaded, every key containing
  ``head`` is dropped and re-initialised, and the EMA starts from the loaded model (the reference
  started it from random weights). The reference's spelling ``--resume CKPT
  --resume_from_pretrain True`` means the same.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from typing import Any, Callable, Dict, List, Optional

from libs.utils.cli import run_command

logger = logging.getLogger("groundnlq")


def str2bool(value: str) -> bool:
    """Parse a command-line boolean (the reference's ``type=bool`` took "False" as True)."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train GroundNLQ (torchrun or a single process).")
    parser.add_argument("config", help="config file (YAML)")
    parser.add_argument("--output", default="run", help="run name: the folder is <output_folder>/<config stem>_<NAME>")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="'auto' = newest snapshot of the run folder; or a snapshot / epoch checkpoint")
    parser.add_argument("--resume-from-pretrain", "--resume_from_pretrain", dest="resume_from_pretrain", type=str2bool, default=False,
                        help="reference spelling: --resume CKPT with this flag = --pretrained CKPT")
    parser.add_argument("--pretrained", default=None, metavar="PATH",
                        help="finetune from this checkpoint (heads re-initialised)")
    parser.add_argument("--opt", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. opt.epochs=3")
    parser.add_argument("--mode", default=None, metavar="NAME",
                        help="apply configs/modes/NAME.yaml over the config (reference: the reference's computation)")
    parser.add_argument("--print-freq", type=int, default=None, help="log every N steps (trainer.print_freq)")
    parser.add_argument("--ckpt-freq", type=int, default=None, help="epoch checkpoint every N epochs (trainer.checkpoint_freq)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle any object in --resume / --pretrained files (only for files you made "
                             "yourself); default: weights-only loading")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and where each non-default value came from, then exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    args = parser.parse_args(argv)
    if args.resume_from_pretrain:
        if not args.resume or args.resume == "auto":
            parser.error("--resume_from_pretrain needs --resume CHECKPOINT")
        if args.pretrained:
            parser.error("give --pretrained or --resume CKPT --resume_from_pretrain, not both")
        args.pretrained, args.resume = args.resume, None
    return args


def restarted_by_torchrun() -> bool:
    """True in workers that ``torchrun --max-restarts=K`` restarted after a failure: they continue
    from the run's newest snapshot, as ``--resume auto`` would."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def run_folder(cfg: Dict[str, Any], config_path: str, output: str) -> str:
    stem = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join(cfg["output_folder"], f"{stem}_{output}")


def make_eval_function(cfg: Dict[str, Any], model_to_evaluate: Callable[[], Any], device: Any) -> Optional[Callable[[], Dict[str, float]]]:
    """Inference on the val split (sharded over ranks), official recall on rank 0, metrics on all."""
    from libs.evaluation.build import build_evaluation, evaluation_records
    from libs.evaluation.evaluator import RecallEvaluator, gather_results, inference_on_dataset
    from libs.utils import comm

    if evaluation_records(cfg) is None:
        logger.warning(f"no validation during training: dataset.val_jsonl_file "
                       f"{cfg['dataset'].get('val_jsonl_file')!r} not found")
        return None
    split = build_evaluation(cfg, num_replicas=comm.get_world_size(), rank=comm.get_rank())
    evaluator = RecallEvaluator(split.ground_truth)

    def evaluate() -> Dict[str, float]:
        results = inference_on_dataset(model_to_evaluate(), split.loader, device, cfg["test_cfg"],
                                       progress=comm.is_main_process() and sys.stderr.isatty())
        merged = gather_results(results)  # every rank's shard, each query once
        metrics = evaluator.evaluate(merged) if comm.is_main_process() else None
        return comm.broadcast_object(metrics)

    return evaluate


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (torchrun stops the other workers this way when one fails) becomes an exception, so
    the trainer's cleanup runs and the log's last line says the run stopped and why."""
    raise SystemExit(f"stopped by signal {signal.Signals(signum).name} (torchrun stops every worker when one fails)")


def train(args: argparse.Namespace) -> None:
    """Config, path checks and the checkpoint to resume, then the run in its folder. A folder this
    run created is removed again when the run fails before its first step (nothing of value in it)."""
    import torch

    from libs.core.config import check_paths_exist, describe_config, paths_read, resolve_config
    from libs.engine.checkpoint import load_file
    from libs.utils import comm

    overrides = list(args.opt)
    if args.print_freq is not None:
        overrides.append(f"trainer.print_freq={args.print_freq}")
    if args.ckpt_freq is not None:
        overrides.append(f"trainer.checkpoint_freq={args.ckpt_freq}")
    if args.print_config:
        print(describe_config(*resolve_config(args.config, overrides=overrides, mode=args.mode)))
        return
    cfg, sources = resolve_config(args.config, overrides=overrides, mode=args.mode)
    check_paths_exist(cfg, sources, paths_read(cfg, training=True))  # before anything is written
    if cfg["trainer"]["cpu_threads"] is not None:  # validated by load_config
        torch.set_num_threads(cfg["trainer"]["cpu_threads"])
    # read an explicit --resume file first: a damaged one must fail before anything is written
    resume_state = None
    if args.resume and args.resume != "auto":
        resume_state = load_file(args.resume, trust=args.trust_checkpoint)
    device = comm.init_distributed()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    folder = run_folder(cfg, args.config, args.output)
    fresh = comm.get_rank() == 0 and not os.path.exists(folder)
    parts: dict = {}  # what train_in_folder built: the trainer (its step count) and the event writers
    with comm.leave_group_when_done():
        try:
            train_in_folder(args, cfg, folder, device, resume_state, parts)
        except BaseException:
            if fresh and ("trainer" not in parts or parts["trainer"].iter == 0):
                remove_run_folder(folder, parts.get("writers", []))
            raise


def remove_run_folder(folder: str, writers: list) -> None:
    """Close the log file and the event writers' files in ``folder``, then remove it."""
    from libs.utils.events import close_logging

    for writer in writers:
        writer.close()
    close_logging()
    shutil.rmtree(folder, ignore_errors=True)


def train_in_folder(args: argparse.Namespace, cfg: dict, folder: str, device: Any, resume_state: Optional[dict],
                    parts: dict) -> None:
    from libs.core.config import save_config
    from libs.datasets.datasets import make_train_loader
    from libs.engine import hooks as H
    from libs.engine.checkpoint import Checkpointer, is_snapshot, load_checkpoint, load_file
    from libs.engine.trainer import SimpleTrainer, fix_random_seed, seed_per_rank, steps_in_epoch
    from libs.modeling.models import make_meta_arch
    from libs.utils import comm
    from libs.utils.ema import ModelEMA
    from libs.utils.events import ConsoleWriter, JSONWriter, TensorboardWriter, setup_logging
    from libs.utils.lr_schedule import make_scheduler
    from libs.utils.optim import make_optimizer

    rank, world_size = comm.get_rank(), comm.get_world_size()
    tcfg = cfg["trainer"]
    if rank == 0:
        os.makedirs(folder, exist_ok=True)
        save_config(cfg, folder)
    comm.barrier()
    setup_logging(folder, rank)
    logger.info(f"run folder {folder}; {world_size} process(es); device {device}; command: {' '.join(sys.argv)}")

    generator = fix_random_seed(cfg["init_rand_seed"], deterministic=tcfg["deterministic"])
    opt_cfg = dict(cfg["opt"])
    if tcfg["scale_lr_by_world_size"]:
        opt_cfg["learning_rate"] = opt_cfg["learning_rate"] * world_size
        logger.info(f"learning rate scaled by the world size: {opt_cfg['learning_rate']}")

    loader = make_train_loader(cfg, generator, num_replicas=world_size, rank=rank)

    model = make_meta_arch(cfg["model_name"], **cfg["model"])
    logger.info(f"model {cfg['model_name']}: {sum(p.numel() for p in model.parameters()):,} parameters")
    if args.pretrained:
        info = load_checkpoint(model, args.pretrained, use_ema=False, strict=True, drop_heads=True,
                               trust=args.trust_checkpoint)
        logger.info(f"finetuning from {args.pretrained}: {len(info['dropped'])} head entries re-initialised")
    model.to(device)
    ema = ModelEMA(model, tcfg["ema_decay"])  # after loading, so a finetune's EMA starts from the loaded model
    seed_per_rank(cfg["init_rand_seed"], rank, generator)  # weights built: each rank its own crops and drop paths

    accum = tcfg["grad_accum_steps"]
    optimizer = make_optimizer(model, opt_cfg, head_lr_groups=float(opt_cfg.get("backbone_lr_weight", 1)) != 1.0)
    scheduler = make_scheduler(optimizer, opt_cfg, steps_in_epoch(loader, 0, accum))
    trainer = SimpleTrainer(
        model, loader, optimizer, scheduler, device=device, ema=ema, grad_accum_steps=accum,
        clip_grad_l2norm=cfg["train_cfg"]["clip_grad_l2norm"], amp=tcfg["amp"],
        max_nonfinite_steps=tcfg["max_nonfinite_steps"], loader_generator=generator, config=cfg,
        criterion=model.criterion,
    )
    parts["trainer"] = trainer
    max_epochs = tcfg["early_stop_epochs"] or (opt_cfg["epochs"] + (opt_cfg["warmup_epochs"] if opt_cfg["warmup"] else 0))

    checkpointer = Checkpointer(folder, keep_last=tcfg["keep_last"])
    eval_function = None
    if tcfg["eval_freq"] > 0:
        eval_model = (lambda: ema.module) if tcfg["eval_use_ema"] else (lambda: model)
        eval_function = make_eval_function(cfg, eval_model, device)
    writers = []
    if rank == 0:
        writers = [
            ConsoleWriter(lambda: trainer.iters_per_epoch, trainer.iters_per_epoch * max_epochs),
            JSONWriter(os.path.join(folder, "metrics.jsonl")),
            TensorboardWriter(os.path.join(folder, "logs")),
        ]
        parts["writers"] = writers
    trainer.register_hooks([
        H.IterationTimer(),
        H.LRScheduler(),
        H.EMAHook(),
        H.ProgressBar(),
        H.PeriodicCheckpointer(checkpointer, tcfg["checkpoint_freq"]),
        H.EvalHook(tcfg["eval_freq"], eval_function, checkpointer if rank == 0 else None,
                   os.path.join(folder, "eval_results.jsonl"),
                   model_label="ema" if tcfg["eval_use_ema"] else "raw") if eval_function else None,
        H.PeriodicWriter(writers, tcfg["print_freq"]),
        H.TrainingCurves(folder),
        H.SnapshotHook(checkpointer, tcfg["snapshot_freq"]),
    ])

    start_epoch = 0
    found = checkpointer.find_resumable() if rank == 0 and (args.resume == "auto" or restarted_by_torchrun()) else None
    path = comm.broadcast_object(found[0] if found else None)
    if path is not None:
        start_epoch = trainer.load_state_dict(found[1] if rank == 0 else load_file(path), source=path)
        logger.info(f"resumed from {path}: epoch {start_epoch}, step {trainer.iter}")
    elif args.resume == "auto":
        logger.info(f"--resume auto: no snapshot in {folder}; starting from scratch")
    elif resume_state is not None:
        if is_snapshot(resume_state):
            start_epoch = trainer.load_state_dict(resume_state, source=args.resume)
        else:
            start_epoch = trainer.load_checkpoint_state(resume_state, source=args.resume)
        logger.info(f"resumed from {args.resume}: epoch {start_epoch}, step {trainer.iter}")

    trainer.train(start_epoch, max_epochs)
    logger.info(f"training done; outputs in {folder}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: train(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
