"""What every command-line tool does with bad user input: one line on stderr, exit status 2.

A ``GroundNLQError`` names the file, key or id at fault, so its traceback helps nobody but a
developer; ``--debug`` shows it anyway.
"""
from __future__ import annotations

import sys
from typing import Callable

from libs.core.errors import GroundNLQError

USER_ERROR_EXIT_CODE = 2


# a DataLoader worker's error reaches the main process with the worker's traceback in its text
WORKER_TRACEBACK_MARKER = "\nOriginal Traceback"


def one_line_message(err: BaseException) -> str:
    """The error's own message on one line (a worker's traceback dropped, line breaks folded)."""
    text = str(err)
    if WORKER_TRACEBACK_MARKER in text:
        last = [line for line in text.splitlines() if line.strip()][-1]  # "pkg.mod.DataError: message"
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def run_command(body: Callable[[], object], debug: bool = False) -> int:
    """Run a tool's body and return its exit status: the int the body returns (0 if it returns
    anything else), or 2 after printing a user error."""
    try:
        result = body()
    except GroundNLQError as err:
        if debug:
            raise
        print(f"error: {one_line_message(err)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
