#!/usr/bin/env bash
# Finetuning a pretrained model on one GPU: heads re-initialised, EMA from the loaded weights.
#   bash tools/train_ego4d_finetune_head_onegpu.sh CONFIG PRETRAINED_CKPT OUTPUT DEVICES [extra args]
# (to continue an interrupted finetune run, add: --resume auto)
source "$(dirname "$0")/_launch_common.sh"
usage_if_short 4 $# "$0 CONFIG PRETRAINED_CKPT OUTPUT DEVICES [extra args]"
CONFIG="$1"; PRETRAINED="$2"; OUTPUT="$3"; DEVICES="$4"; shift 4
use_devices "${DEVICES}"
run_torchrun "${NPROC:-1}" train.py "${CONFIG}" --output "${OUTPUT}" \
  --pretrained "${PRETRAINED}" "$@"
