"""Mutation score of one module against its own tests (mutmut), equivalent mutants set aside.

A mutant is the module with one small change (``<`` for ``<=``, ``1`` for ``0``, ``and`` for
``or``, a dropped argument, ...). It is *killed* when one of the module's tests fails with it and
*survives* otherwise; a surviving mutant is a behaviour no test checks, unless it is
*equivalent* (it cannot change any result; listed with the reason in tests/README.md, section
"Mutation testing"). Score = killed / (all - equivalent).

    pip install -e ".[dev]"                       # mutmut
    python tests/mutation_score.py libs/modeling/targets.py
    python tests/mutation_score.py libs/utils/nms.py tests/utils/test_nms.py --show

The run works on a copy of the checkout in a temporary folder (mutmut writes a ``mutants/`` tree
beside the code), so the checkout is never touched. Without test files, the module's own test
file (``MODULE_TESTS``) is used. ``--show`` prints each surviving mutant's diff.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from libs.utils.paths import shared_dir  # noqa: E402
README = os.path.join(ROOT, "tests", "README.md")

MODULE_TESTS = {
    "libs/evaluation/metrics.py": ["tests/evaluation/test_metrics.py"],
    "libs/utils/nms.py": ["tests/utils/test_nms.py"],
    "libs/core/config.py": ["tests/core/test_config.py"],
    "libs/modeling/losses.py": ["tests/modeling/test_losses.py"],
    "libs/evaluation/postprocess.py": ["tests/evaluation/test_postprocess.py"],
    "libs/modeling/targets.py": ["tests/modeling/test_targets.py"],
}

_EQUIVALENT_ROW = re.compile(r"^\|\s*`(libs\.[\w.]+__mutmut_\d+)`\s*\|")


def equivalent_mutants() -> set:
    """Mutant names listed as equivalent in tests/README.md (first column of its table)."""
    with open(README) as f:
        return {m.group(1) for line in f if (m := _EQUIVALENT_ROW.match(line))}


def copy_checkout(dest: str) -> None:
    """Tracked and untracked-but-not-ignored files, plus the compiled NMS extensions."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    built = [os.path.join("libs", "utils", name) for name in os.listdir(os.path.join(ROOT, "libs", "utils"))
             if name.endswith(".so")]
    for rel in files + built:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def write_config(dest: str, module: str, tests: list) -> None:
    # mutmut runs the tests in dest/mutants/, where it copies the code and what also_copy names:
    # everything else of the checkout (configs, data, tools) that tests read
    others = sorted(name for name in os.listdir(dest) if name not in ("libs", "tests", "mutants"))
    lines = ["[mutmut]", "source_paths=libs", f"only_mutate={module}",
             "also_copy=", *(f"    {name}" for name in others),
             "pytest_add_cli_args_test_selection=", *(f"    {t}" for t in tests),
             "pytest_add_cli_args=", "    -p", "    no:cacheprovider", "    -q",
             # torch is not fork-safe after it has run: a clean server process forks the workers
             "process_isolation=forkserver",
             # a mutant that loops forever is killed after 4x its tests' clean time (default 15x)
             "timeout_multiplier=4.0"]
    with open(os.path.join(dest, "setup.cfg"), "w") as f:
        f.write("\n".join(lines) + "\n")


# mutmut's exit codes: a failing test (1, 3), a timeout or a crash kills the mutant; 0 (tests
# pass) or 5/33 (no test reaches the code) let it survive; None: the run never checked it
_KINDS = ("killed", "survived", "equivalent", "not checked")
_SURVIVED = {0, 5, 33, 35}


def _status(code) -> str:
    if code is None:
        return "not checked"
    return "survived" if code in _SURVIVED else "killed"


def exit_codes(work: str, module: str) -> dict:
    with open(os.path.join(work, "mutants", module + ".meta")) as f:
        return json.load(f)["exit_code_by_key"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="path of the module to mutate, e.g. libs/modeling/targets.py")
    parser.add_argument("tests", nargs="*", help="test files to run (default: the module's own)")
    parser.add_argument("--show", action="store_true", help="print the diff of each surviving mutant")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    module = os.path.relpath(os.path.abspath(args.module), ROOT)
    tests = args.tests or MODULE_TESTS.get(module)
    if not tests:
        parser.error(f"no default tests for {module}; name the test files")
    if shutil.which("mutmut") is None:
        parser.error("mutmut is not installed: pip install -e '.[dev]'")
    work = args.keep or tempfile.mkdtemp(prefix="mutation-")
    os.makedirs(work, exist_ok=True)
    try:
        copy_checkout(work)
        write_config(work, module, [os.path.relpath(os.path.abspath(t), ROOT) for t in tests])
        # the copy has no ../shared beside it: point the annotation tests at this checkout's
        env = {**os.environ, "GROUNDNLQ_SHARED": shared_dir()}
        run = subprocess.run(["mutmut", "run"], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if run.returncode != 0:
            print(run.stdout[-4000:], file=sys.stderr)
            return run.returncode
        codes = exit_codes(work, module)
        equivalent = equivalent_mutants()
        status = {name: ("equivalent" if name in equivalent else _status(code)) for name, code in codes.items()}
        counts = {kind: sum(1 for s in status.values() if s == kind) for kind in _KINDS}
        counted = len(codes) - counts["equivalent"]
        score = counts["killed"] / counted if counted else 1.0
        print(f"{module}: {len(codes)} mutants, " + ", ".join(f"{counts[k]} {k}" for k in _KINDS)
              + f"; score {score:.3f} ({' '.join(tests)})")
        for name in sorted(n for n, s in status.items() if s not in ("killed", "equivalent")):
            print(f"  {status[name]}: {name}")
            if args.show:
                diff = subprocess.run(["mutmut", "show", name], cwd=work, capture_output=True, text=True).stdout
                print("".join(f"    {line}\n" for line in diff.splitlines()
                              if line[:1] in "+-" and line[:3] not in ("+++", "---")), end="")
        stale = sorted(name for name in equivalent if name.startswith(module[:-3].replace("/", ".") + ".x")
                       and name not in codes)
        if stale:
            print(f"  listed as equivalent but no longer generated (renumbered?): {', '.join(stale)}")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
