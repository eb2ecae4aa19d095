"""The console commands (``groundnlq-*``, installed by ``pip install -e .``) run the checkout's
scripts from any folder; flags are spelled with dashes, the reference's spellings kept as aliases."""
import os
import shutil
import subprocess
import sys

import pytest

from libs import commands
from libs.utils.paths import REPO_ROOT

ENTRY_POINTS = {"groundnlq-train": "train", "groundnlq-eval": "evaluate", "groundnlq-ensemble": "ensemble",
                "groundnlq-ground": "ground", "groundnlq-convert-features": "convert_features",
                "groundnlq-reformat": "reformat"}


def test_every_command_runs_its_script_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, function in ENTRY_POINTS.items():
        monkeypatch.setattr(sys, "argv", [name, "--help"])
        with pytest.raises(SystemExit) as done:
            getattr(commands, function)()
        assert done.value.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: {name} "), name
        assert os.path.isfile(os.path.join(REPO_ROOT, commands.SCRIPTS[name]))


def test_setup_installs_every_command():
    with open(os.path.join(REPO_ROOT, "setup.py")) as f:
        text = f.read()
    for name, function in ENTRY_POINTS.items():
        assert f'"{name} = libs.commands:{function}"' in text


@pytest.mark.skipif(shutil.which("groundnlq-eval") is None, reason="the package is not installed (pip install -e .)")
def test_the_installed_command_works_outside_the_checkout(tmp_path):
    done = subprocess.run(["groundnlq-eval", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "--top-k" in done.stdout


def test_dashed_flags_and_the_references_spellings():
    import eval as eval_cli
    from ego4d_data import reformat_data

    assert eval_cli.parse_args(["c.yaml", "k.pth", "--top-k", "7"]).topk == 7
    assert eval_cli.parse_args(["c.yaml", "k.pth", "--topk", "7"]).topk == 7
    parser_help = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "ego4d_data", "reformat_data.py"), "--help"],
                                 capture_output=True, text=True).stdout
    assert "--input-file-dir INPUT_FILE_DIR, --input_file_dir INPUT_FILE_DIR" in parser_help
    assert reformat_data is not None
