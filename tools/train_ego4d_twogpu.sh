#!/usr/bin/env bash
# Training from scratch on two GPUs (the reference's setting for the scratch configs).
#   bash tools/train_ego4d_twogpu.sh CONFIG OUTPUT DEVICES [extra train.py args]   (DEVICES e.g. 0,1)
source "$(dirname "$0")/_launch_common.sh"
usage_if_short 3 $# "$0 CONFIG OUTPUT DEVICES [extra args]"
CONFIG="$1"; OUTPUT="$2"; DEVICES="$3"; shift 3
use_devices "${DEVICES}"
run_torchrun "$(default_nproc "${DEVICES}" 2)" train.py "${CONFIG}" --output "${OUTPUT}" "$@"
