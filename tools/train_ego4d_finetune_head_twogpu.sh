#!/usr/bin/env bash
# Finetuning a pretrained model on two GPUs.
#   bash tools/train_ego4d_finetune_head_twogpu.sh CONFIG PRETRAINED_CKPT OUTPUT DEVICES [extra args]
source "$(dirname "$0")/_launch_common.sh"
usage_if_short 4 $# "$0 CONFIG PRETRAINED_CKPT OUTPUT DEVICES [extra args]"
CONFIG="$1"; PRETRAINED="$2"; OUTPUT="$3"; DEVICES="$4"; shift 4
use_devices "${DEVICES}"
run_torchrun "$(default_nproc "${DEVICES}" 2)" train.py "${CONFIG}" --output "${OUTPUT}" \
  --pretrained "${PRETRAINED}" "$@"
