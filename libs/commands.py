"""The console commands ``pip install -e .`` installs: each runs one of the checkout's scripts, so
``groundnlq-train CONFIG ...`` is ``python train.py CONFIG ...`` from any folder.

The scripts stay where the reference's users look for them (``train.py``, ``eval.py``, ...); these
commands only find them through the installed package (an editable install points into the
checkout) and run them with the command's arguments.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable

from libs.utils.paths import REPO_ROOT

SCRIPTS = {
    "groundnlq-train": "train.py",
    "groundnlq-eval": "eval.py",
    "groundnlq-ensemble": "ensemble.py",
    "groundnlq-ground": "tools/ground.py",
    "groundnlq-convert-features": "feature_extraction/convert_features.py",
    "groundnlq-reformat": "ego4d_data/reformat_data.py",
}


def _command(name: str) -> Callable[[], None]:
    def run() -> None:
        path = os.path.join(REPO_ROOT, SCRIPTS[name])
        if not os.path.isfile(path):
            raise SystemExit(f"error: {name} runs {path}, which is not there; the commands need the "
                             "checkout (pip install -e .)")
        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
        spec = importlib.util.spec_from_file_location(f"groundnlq_command_{os.path.basename(path)[:-3]}", path)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        sys.argv[0] = name  # the usage line names the command
        sys.exit(script.main())

    run.__doc__ = f"``{name}``: ``python {SCRIPTS[name]}`` from any folder."
    return run


train = _command("groundnlq-train")
evaluate = _command("groundnlq-eval")
ensemble = _command("groundnlq-ensemble")
ground = _command("groundnlq-ground")
convert_features = _command("groundnlq-convert-features")
reformat = _command("groundnlq-reformat")
