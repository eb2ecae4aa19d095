#!/usr/bin/env bash
# The GPU check, in one run (about 4-6 minutes on an H100): build the CUDA NMS kernel, run the
# CUDA tests (NMS backends against each other, the golden model, autocast and AMP training on the
# GPU), then time NMS per backend and the model in float32 and bf16.
#
#   bash bench/gpu_check.sh [OUT_DIR]        # OUT_DIR defaults to $OUT, else ./gpu_check_out
#
# Needs python3 with a CUDA build of torch, nvcc matching its CUDA major version, and the golden
# fixtures: ../shared (default) or a copy in ./shared (a GPU machine that sees only the checkout:
# `mkdir -p shared && cp -r ../shared/golden shared/` first). Writes gpu_check.log, nms.json and
# model_{fp32,bf16}.json into OUT_DIR; the figures go into bench/RESULTS.md by hand, with the
# device named. Exits non-zero when the build or a test fails; the benchmarks run regardless.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
log="$out/gpu_check.log"
[ -d shared/golden ] && export GROUNDNLQ_SHARED="$PWD/shared"
# torch guesses the toolkit from `which nvcc`, wrong where nvcc is a wrapper script
[ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ] && export CUDA_HOME=/usr/local/cuda
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $* ($(date +%T))" | tee -a "$log"; }

step "machine"
{ nvidia-smi -L; nvcc --version | tail -1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$log"

step "build the extensions (C++ and CUDA) in place"
arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
  python3 setup.py build_ext --inplace >"$out/build.log" 2>&1 || status=1
grep -iE "error|warning: could not" "$out/build.log" | tee -a "$log"
python3 -c "from libs.utils import nms; print('NMS backends:', nms.available_backends())" 2>&1 | tee -a "$log"

step "CUDA tests"
GROUNDNLQ_EXPECT_NMS_BACKENDS=cpp,cuda python3 -m pytest -q -rs \
  tests/utils/test_nms.py tests/modeling/test_cuda.py 2>&1 | tee -a "$log" || status=1

step "bench_nms"
python3 bench/bench_nms.py 2>&1 | tee -a "$log" | tail -1 >"$out/nms.json"

for amp in none bf16; do
  name=$([ "$amp" = none ] && echo fp32 || echo "$amp")
  step "bench_model $name"
  python3 bench/bench_model.py --device cuda --amp "$amp" --threads 4 --json-out "$out/model_$name.json" \
    2>&1 | grep -v '^{' | tee -a "$log"
done

step "done, status $status"
exit "$status"
