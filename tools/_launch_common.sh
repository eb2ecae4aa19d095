#!/usr/bin/env bash
# Shared by the launchers: pick the number of processes and run a script under torchrun.
#   NPROC   processes per node (default: the number of DEVICES listed, or all visible GPUs;
#           1 on a machine without CUDA)
#   PYTHON  the interpreter (default: python)
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
# torchrun's shared TCP store keeps a failed attempt's keys, which hangs workers restarted by
# --max-restarts (pytorch#135712); train.py also keys its process group by attempt
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE="${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}"

# use_devices DEVICES: restrict CUDA to a comma-separated list (empty: leave as is)
use_devices() {
  if [[ -n "${1:-}" ]]; then
    export CUDA_VISIBLE_DEVICES="$1"
  fi
}

# default_nproc DEVICES FALLBACK: NPROC if set; 1 without CUDA; else the count of DEVICES, else FALLBACK
default_nproc() {
  if [[ -n "${NPROC:-}" ]]; then echo "${NPROC}"; return; fi
  if ! "${PYTHON}" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo 1; return
  fi
  if [[ -n "${1:-}" ]]; then
    local count; count=$(awk -F',' '{print NF}' <<<"$1"); echo "${count}"; return
  fi
  echo "${2}"
}

# run_torchrun NPROC SCRIPT ARGS...: one node, NPROC processes, from the repository root
run_torchrun() {
  local nproc="$1"; shift
  cd "${REPO_ROOT}"
  echo "+ torchrun --standalone --nproc_per_node=${nproc} $*" >&2
  exec "${PYTHON}" -m torch.distributed.run --standalone --nproc_per_node="${nproc}" "$@"
}

usage_if_short() {  # usage_if_short NEEDED GIVEN USAGE
  if (( $2 < $1 )); then echo "usage: $3" >&2; exit 2; fi
}
