#!/usr/bin/env bash
# Narration pretraining (the reference: 4 GPUs, all visible ones).
#   bash tools/pretrain_ego4d_narration.sh CONFIG OUTPUT [extra train.py args]
# e.g. bash tools/pretrain_ego4d_narration.sh configs/ego4d_narrations_nlq_internvideo.yaml pretrain
source "$(dirname "$0")/_launch_common.sh"
usage_if_short 2 $# "$0 CONFIG OUTPUT [extra args]"
CONFIG="$1"; OUTPUT="$2"; shift 2
GPUS=$("${PYTHON}" -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
run_torchrun "$(default_nproc "" "${GPUS}")" train.py "${CONFIG}" --output "${OUTPUT}" "$@"
