"""What every command-line tool does with bad user input: one line on stderr, exit status 2.

A ``GroundNLQError`` names the file, key or id at fault, so its traceback helps nobody but a
developer; ``--debug`` shows it anyway.
"""
from __future__ import annotations

import sys
from typing import Callable

from libs.core.errors import GroundNLQError

USER_ERROR_EXIT_CODE = 2


def run_command(body: Callable[[], object], debug: bool = False) -> int:
    """Run a tool's body and return its exit status (0, or 2 after printing a user error)."""
    try:
        body()
    except GroundNLQError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0
