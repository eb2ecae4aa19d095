#!/usr/bin/env bash
# README command 2: install the package with the extras its tests use (test: pytest, hypothesis,
# lmdb; text: MiniLM and CLIP; viz: matplotlib; video: PyAV), building the C++ NMS in place without build isolation so
# torch is not downloaded again, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test,text,viz,video]" --no-build-isolation
python -m pytest -q tests "$@"
