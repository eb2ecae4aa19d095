#!/usr/bin/env bash
# The reference's name for the one-GPU finetune launcher (same arguments).
exec bash "$(dirname "$0")/train_ego4d_finetune_head_onegpu.sh" "$@"
