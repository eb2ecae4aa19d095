#!/usr/bin/env bash
# README command 1: install, build the demo data, train, evaluate on demo val (printing recall),
# and write predictions plus an Ego4D (EvalAI) submission for demo test. CPU is enough.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first: a bare `torch` requirement would pull a multi-GB CUDA build
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[viz]" --no-build-isolation  # viz: the run draws its training curves
python tools/make_demo_data.py --out data/demo
python train.py configs/demo.yaml --output demo "$@"
RUN=ckpt/demo_demo
python eval.py configs/demo.yaml "$RUN/model_best.pth.tar" --split val --no-progress
python eval.py configs/demo.yaml "$RUN/model_best.pth.tar" --split test --no-progress
echo "demo done: predictions, submissions and metrics are in $RUN/"
