"""Shared test fixtures: the repository root on sys.path, one torch thread, shared-folder lookup."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from libs.utils.paths import shared_path  # noqa: E402

torch.set_num_threads(1)


def require_shared(*parts: str) -> str:
    """Return a path under ../shared, skipping the test cleanly when it is absent."""
    path = shared_path(*parts)
    if not os.path.exists(path):
        pytest.skip(f"shared file not available: {path}")
    return path


@pytest.fixture
def shared():
    return require_shared
