"""User-facing errors.

Anything wrong with what the user gave us (a file, a config key, an id) raises a subclass of
``GroundNLQError`` whose message names the file, key or id and what was expected. Command-line
tools print these messages without a traceback (``--debug`` shows it) and exit non-zero.
"""


class GroundNLQError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(GroundNLQError, ValueError):
    """A config file or override is wrong (unknown key, wrong type, missing path)."""


class DataError(GroundNLQError, ValueError):
    """An annotation, feature or prediction file is malformed or inconsistent."""


class CheckpointError(GroundNLQError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


def missing_package(package: str, why: str, hint: str) -> GroundNLQError:
    """The error for an optional package that is not installed: what needs it, how to install it."""
    return GroundNLQError(f"{why} needs the Python package {package!r}, which is not installed; "
                          f"install it with: {hint}")
