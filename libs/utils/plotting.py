"""Figures without pyplot: matplotlib as an optional extra, a ``Figure`` rendered by Agg, atomic PNGs.

Shared by the evaluation timelines (``libs.evaluation.visualize``) and the training curves
(``libs.utils.training_plots``): no global pyplot state, no display, safe at the end of training.
"""
from __future__ import annotations

from typing import Any

from libs.core.errors import GroundNLQError
from libs.utils.io import atomic_open

INSTALL_HINT = "pip install -e .[viz]  (or: pip install matplotlib)"
FIGURE_DPI = 100


def require_matplotlib() -> Any:
    """Import matplotlib or raise a GroundNLQError saying how to install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise GroundNLQError(
            f"drawing figures needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    return matplotlib


def new_figure(width_in: float, height_in: float) -> Any:
    """A pyplot-free ``Figure`` (rendered by Agg when saved)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=FIGURE_DPI)


def save_figure(fig: Any, path: str) -> str:
    """Write ``fig`` as a PNG atomically (fixed size: no tight bounding box) and return the path."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=FIGURE_DPI)
    return path
