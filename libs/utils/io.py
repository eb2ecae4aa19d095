"""Atomic writes: write to a temporary file beside the target, then rename into place.

A killed process therefore never leaves a half-written checkpoint, prediction or report.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator, IO


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync and rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; honour the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(obj: Any, path: str, indent: int | None = None) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)


def torch_save(obj: Any, path: str) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
