"""Where the repository and the shared reference material live."""
from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_dir() -> str:
    """The shared folder (the real Ego4D annotation files some tests read): ``$GROUNDNLQ_SHARED`` or ``<repo>/../shared``."""
    return os.environ.get("GROUNDNLQ_SHARED", os.path.join(os.path.dirname(REPO_ROOT), "shared"))


def shared_path(*parts: str) -> str:
    """A path inside the shared folder (it may not exist; callers check and skip)."""
    return os.path.join(shared_dir(), *parts)
