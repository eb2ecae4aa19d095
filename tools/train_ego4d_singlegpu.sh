#!/usr/bin/env bash
# Training from scratch on one GPU (or the CPU).
#   bash tools/train_ego4d_singlegpu.sh CONFIG OUTPUT DEVICES [extra train.py args]
source "$(dirname "$0")/_launch_common.sh"
usage_if_short 3 $# "$0 CONFIG OUTPUT DEVICES [extra args]"
CONFIG="$1"; OUTPUT="$2"; DEVICES="$3"; shift 3
use_devices "${DEVICES}"
run_torchrun "${NPROC:-1}" train.py "${CONFIG}" --output "${OUTPUT}" "$@"
