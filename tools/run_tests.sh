#!/usr/bin/env bash
# README command 2: install the package with its test extras (C++ NMS built in place, no build
# isolation so torch is not downloaded again) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]" --no-build-isolation
python -m pytest -q tests "$@"
