"""Shared test fixtures: the repository root on sys.path, one torch thread, fixture and shared-folder lookup."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from libs.utils.paths import shared_path  # noqa: E402

torch.set_num_threads(1)


FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def fixture_path(*parts: str) -> str:
    """A file under tests/fixtures (the reference's golden outputs and state-dict table): part of
    every clone, so the parity tests never skip; a missing one is an error, not a skip."""
    path = os.path.join(FIXTURES, *parts)
    if not os.path.exists(path):
        raise FileNotFoundError(f"test fixture missing from the checkout: {path}")
    return path


def require_shared(*parts: str) -> str:
    """Return a path under ../shared, skipping the test cleanly when it is absent."""
    path = shared_path(*parts)
    if not os.path.exists(path):
        pytest.skip(f"shared file not available: {path}")
    return path


@pytest.fixture
def shared():
    return require_shared
