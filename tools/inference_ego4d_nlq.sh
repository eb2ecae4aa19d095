#!/usr/bin/env bash
# Evaluate a checkpoint: predictions, the EvalAI submission and (val) metrics, written once.
# Under torchrun with one process per device; each evaluates a contiguous block of the split.
#   bash tools/inference_ego4d_nlq.sh CONFIG CHECKPOINT DEVICES [extra eval.py args, e.g. --split test --ema]
source "$(dirname "$0")/_launch_common.sh"
usage_if_short 3 $# "$0 CONFIG CHECKPOINT DEVICES [extra args]"
CONFIG="$1"; CHECKPOINT="$2"; DEVICES="$3"; shift 3
use_devices "${DEVICES}"
run_torchrun "$(default_nproc "${DEVICES}" 1)" eval.py "${CONFIG}" "${CHECKPOINT}" "$@"
