"""Checkpoint and snapshot files: atomic writes, rotation, safe loading, ``--resume auto``.

Two kinds of files live in a run's folder:

* **epoch checkpoints** ``epoch_XXX.pth.tar`` (and ``model_best.pth.tar``) in the reference's format
  ``{epoch, state_dict, optimizer, scheduler, state_dict_ema}`` plus our keys; ``epoch`` is the
  0-based index of the finished epoch, as the reference's.
* **snapshots** ``snapshot_last.pth`` (the previous one rotated to ``snapshot_prev.pth``): everything a
  resumed run needs to continue bit-identically (see ``Trainer.state_dict``), including RNG states.

Everything is stored as tensors and plain Python types so ``torch.load(weights_only=True)`` reads it.
What the files *contain* is the trainer's business; this module only writes, finds and reads them.
"""
from __future__ import annotations

import glob
import logging
import os
import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from libs.core.errors import CheckpointError
from libs.utils.io import torch_save

logger = logging.getLogger("groundnlq")

SNAPSHOT_FORMAT = "groundnlq-snapshot"
SNAPSHOT_LAST = "snapshot_last.pth"
SNAPSHOT_PREV = "snapshot_prev.pth"
BEST_CHECKPOINT = "model_best.pth.tar"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pth.tar"


# ---------------------------------------------------------------- RNG states (weights_only-safe)
def capture_rng_state(generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """Python, NumPy, torch (CPU and every CUDA device) and an optional generator, as plain types."""
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, gauss): plain types
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng_state(state: Dict[str, Any], generator: Optional[torch.Generator] = None) -> None:
    """Inverse of ``capture_rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
        "has_gauss": np_state["has_gauss"],
        "gauss": np_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# ---------------------------------------------------------------- files
def load_file(path: str, trust: bool = False) -> Dict[str, Any]:
    """A checkpoint or snapshot read weights-only on the CPU (``trust``: unpickle anything; only for
    files you made yourself); CheckpointError naming the file otherwise."""
    from libs.modeling.checkpoint import read_checkpoint

    try:
        obj = read_checkpoint(path, trust=trust)
    except CheckpointError:
        raise
    except Exception as exc:  # anything else a damaged file can raise
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path!r}: expected a dict, got {type(obj).__name__}")
    return obj


def is_snapshot(state: Dict[str, Any]) -> bool:
    return state.get("format") == SNAPSHOT_FORMAT


class Checkpointer:
    """Writes a run's checkpoints and snapshots into ``folder``; reads them back for resuming.

    Only rank 0 should call the ``save_*`` methods.
    """

    def __init__(self, folder: str, keep_last: Optional[int] = 3) -> None:
        self.folder = folder
        self.keep_last = keep_last

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def save_snapshot(self, state: Dict[str, Any]) -> str:
        """Write ``snapshot_last.pth`` atomically, keeping the previous one as ``snapshot_prev.pth``."""
        last = self.path(SNAPSHOT_LAST)
        if os.path.exists(last):
            os.replace(last, self.path(SNAPSHOT_PREV))
        torch_save({"format": SNAPSHOT_FORMAT, **state}, last)
        return last

    def save_checkpoint(self, name: str, state: Dict[str, Any]) -> str:
        path = self.path(name)
        torch_save(state, path)
        return path

    def save_epoch_checkpoint(self, epoch: int, state: Dict[str, Any]) -> str:
        """``epoch_XXX.pth.tar``; then delete all but the newest ``keep_last`` (None or <= 0: keep all)."""
        path = self.save_checkpoint(epoch_checkpoint_name(epoch), state)
        if self.keep_last and self.keep_last > 0:
            for old in self.epoch_checkpoints()[: -self.keep_last]:
                os.remove(old)
        return path

    def epoch_checkpoints(self) -> List[str]:
        """Paths of ``epoch_XXX.pth.tar`` files, oldest epoch first."""
        return sorted(glob.glob(os.path.join(glob.escape(self.folder), "epoch_[0-9][0-9][0-9]*.pth.tar")))

    def snapshot_candidates(self) -> List[str]:
        """Snapshot files of the folder, newest first (by modification time, then name)."""
        paths = glob.glob(os.path.join(glob.escape(self.folder), "snapshot_*.pth"))
        return sorted(paths, key=lambda p: (os.path.getmtime(p), p.endswith(SNAPSHOT_LAST)), reverse=True)

    def find_resumable(self) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The newest readable snapshot ``(path, state)``; unreadable ones are skipped with a warning."""
        for path in self.snapshot_candidates():
            try:
                state = load_file(path)
            except CheckpointError as exc:
                logger.warning(f"skipping unreadable snapshot: {exc}")
                continue
            if not is_snapshot(state):
                logger.warning(f"skipping {path!r}: not a snapshot of this trainer")
                continue
            return path, state
        return None
