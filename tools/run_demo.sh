#!/usr/bin/env bash
# README command 1: install, build the demo data, train, evaluate on demo val (printing recall),
# and write predictions plus an Ego4D (EvalAI) submission for demo test. CPU is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first, and the CPU build: on Linux, PyPI's torch is the multi-GB CUDA build; PyTorch's CPU
# index offers 2.13.0+cpu, which pip prefers (an installed torch, CPU or CUDA, is kept as it is)
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q --no-deps torch==2.13.0 \
        --extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    python -m pip install -q torch==2.13.0  # its dependencies, from the usual index
fi
python -m pip install -q -e ".[viz]" --no-build-isolation  # viz: the run draws its training curves
python tools/make_demo_data.py --out data/demo
python train.py configs/demo.yaml --output demo "$@"
RUN=ckpt/demo_demo
python eval.py configs/demo.yaml "$RUN/model_best.pth.tar" --split val --no-progress
python eval.py configs/demo.yaml "$RUN/model_best.pth.tar" --split test --no-progress
echo "demo done: predictions, submissions and metrics are in $RUN/"
