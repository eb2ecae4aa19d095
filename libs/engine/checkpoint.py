"""Checkpoint files: reading them safely, loading model weights from them, writing and finding a
run's checkpoints and snapshots.

Reading: ``torch.load(weights_only=True)`` on the CPU (plus a small allow-list of NumPy scalar
types that old optimizer states hold); arbitrary unpickling needs ``trust=True``; every problem is
a ``CheckpointError`` naming the file. Weights come from any of ``{epoch, state_dict, optimizer,
scheduler, state_dict_ema, ...}`` (the reference's and this project's epoch checkpoints),
``{model: ...}`` (snapshots) or a bare state dict, with or without DDP's ``module.`` prefix.

A run's folder holds two kinds of files:

* **epoch checkpoints** ``epoch_XXX.pth.tar`` (and ``model_best.pth.tar``) in the reference's format
  ``{epoch, state_dict, optimizer, scheduler, state_dict_ema}`` plus our keys; ``epoch`` is the
  0-based index of the finished epoch, as the reference's.
* **snapshots** ``snapshot_last.pth`` (the previous one rotated to ``snapshot_prev.pth``): everything a
  resumed run needs to continue bit-identically (see ``Trainer.state_dict``), including RNG states.

What the files *contain* is the trainer's business; this module reads, writes and finds them.
"""
from __future__ import annotations

import glob
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from libs.core.errors import CheckpointError
from libs.utils.io import torch_save

logger = logging.getLogger("groundnlq")
Tensor = torch.Tensor

DDP_PREFIX = "module."
# keys the reference's finetuning script drops (``train_ft.py``: names containing "head")
HEAD_KEY_MARKER = "head"
MAX_NAMES_IN_MESSAGE = 12


def _numpy_safe_globals() -> List[Any]:
    """NumPy objects that old checkpoints may hold in optimizer/scheduler state (scalars, dtypes)."""
    import numpy as np

    allowed: List[Any] = [np.dtype, np.ndarray]
    for module_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            module = __import__(module_name, fromlist=["scalar", "_reconstruct"])
            allowed += [module.scalar, module._reconstruct]
            break
        except (ImportError, AttributeError):
            continue
    allowed += [type(np.dtype(name)) for name in ("float32", "float64", "int64", "int32", "bool")]
    return allowed


# how torch names what a weights-only load refused: "Unsupported global: GLOBAL argparse.Namespace was
# not an allowed global", "unsupported GLOBAL posix.system whose module posix is blocked"
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# the useful part of torch's message when a weights-only load cannot parse a file
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")
# the command-line flag that maps to ``trust=True`` (eval.py, train.py)
TRUST_FLAG = "--trust-checkpoint"


def read_checkpoint(path: str, trust: bool = False) -> Any:
    """``torch.load`` on the CPU, weights-only unless ``trust`` (only for files you made yourself).

    Weights-only loading refuses every class outside tensors, plain Python types and the NumPy
    allow-list, so a checkpoint cannot run code; a refused class is named in the error. A file
    torch cannot parse at all (empty, truncated, not a checkpoint) raises a ``CheckpointError`` too.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes); expected a torch checkpoint")
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is None:  # a parse failure, not a refused class
            raise _unreadable(path, err) from err
        raise CheckpointError(
            f"checkpoint {path!r} holds a {refused.group(1)} object, which a weights-only load refuses; "
            f"if you made the file yourself, pass {TRUST_FLAG} (trust=True) to unpickle it"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, IndexError, ... on damaged files
        raise _unreadable(path, err) from err


def _unreadable(path: str, err: BaseException, max_chars: int = 160) -> CheckpointError:
    """One line for a file torch cannot parse (torch's own messages run over several lines)."""
    text = str(err).strip()
    unpickler = _UNPICKLER_DETAIL.search(text)
    line = unpickler.group(1) if unpickler else (text.splitlines() or [""])[0]
    line = line if len(line) <= max_chars else line[:max_chars] + "..."
    detail = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return CheckpointError(f"checkpoint {path!r} cannot be read (truncated or not a torch checkpoint?): {detail}")


def select_weights(checkpoint: Any, use_ema: bool = False, source: str = "checkpoint") -> Dict[str, Tensor]:
    """The model weights inside a loaded checkpoint (raw or EMA), without ``module.`` prefixes."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict, got {type(checkpoint).__name__}")
    if use_ema:
        if "state_dict_ema" not in checkpoint or checkpoint["state_dict_ema"] is None:
            raise CheckpointError(f"{source}: EMA weights requested but there is no 'state_dict_ema' entry")
        weights = checkpoint["state_dict_ema"]
    elif "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        weights = checkpoint["state_dict"]
    elif "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        weights = checkpoint["model"]
    else:
        weights = checkpoint
    if not all(isinstance(v, Tensor) for v in weights.values()):
        bad = [k for k, v in weights.items() if not isinstance(v, Tensor)][:MAX_NAMES_IN_MESSAGE]
        raise CheckpointError(f"{source}: no model weights found (non-tensor entries {bad})")
    return strip_prefix(weights)


def strip_prefix(weights: Mapping[str, Tensor], prefix: str = DDP_PREFIX) -> Dict[str, Tensor]:
    """Remove a prefix (DDP's ``module.``) that every key carries."""
    if weights and all(k.startswith(prefix) for k in weights):
        return {k[len(prefix):]: v for k, v in weights.items()}
    return dict(weights)


def _names(keys: List[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMES_IN_MESSAGE])
    more = len(keys) - MAX_NAMES_IN_MESSAGE
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def load_checkpoint(
    model: nn.Module,
    path_or_dict: Union[str, Mapping[str, Any]],
    use_ema: bool = False,
    strict: bool = True,
    drop_heads: bool = False,
    trust: bool = False,
) -> Dict[str, Any]:
    """Load weights into ``model`` (a DDP-wrapped model is unwrapped).

    ``use_ema`` picks ``state_dict_ema``; ``drop_heads`` drops keys containing "head" (finetuning
    from a pretrained model, as the reference's ``train_ft.py``), which are then not required.
    With ``strict`` every other missing or unexpected key is an error; shape mismatches always are.
    Returns ``{"epoch", "missing", "unexpected", "dropped"}``.
    """
    source = path_or_dict if isinstance(path_or_dict, str) else "checkpoint"
    checkpoint = read_checkpoint(path_or_dict, trust) if isinstance(path_or_dict, str) else path_or_dict
    weights = select_weights(checkpoint, use_ema, source)
    model = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model

    dropped = sorted(k for k in weights if HEAD_KEY_MARKER in k) if drop_heads else []
    for key in dropped:
        del weights[key]
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights and not (drop_heads and HEAD_KEY_MARKER in k)]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in weights
        if k in expected and weights[k].shape != expected[k].shape
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch for {_names(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys {_names(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_names(unexpected)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(problems))

    model.load_state_dict({k: v for k, v in weights.items() if k in expected}, strict=False)
    epoch: Optional[int] = checkpoint.get("epoch") if isinstance(checkpoint, Mapping) else None
    return {"epoch": epoch, "missing": missing, "unexpected": unexpected, "dropped": dropped}


def load_reference_checkpoint(
    model: nn.Module, path_or_dict: Union[str, Mapping[str, Any]], use_ema: bool = False, strict: bool = True
) -> Dict[str, Any]:
    """A reference (``houzhijian/GroundNLQ``) checkpoint: the same loader, named for readers."""
    return load_checkpoint(model, path_or_dict, use_ema=use_ema, strict=strict)


SNAPSHOT_FORMAT = "groundnlq-snapshot"
SNAPSHOT_LAST = "snapshot_last.pth"
SNAPSHOT_PREV = "snapshot_prev.pth"
BEST_CHECKPOINT = "model_best.pth.tar"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pth.tar"


# ---------------------------------------------------------------- a run's files
def load_file(path: str, trust: bool = False) -> Dict[str, Any]:
    """A checkpoint or snapshot read weights-only on the CPU (``trust``: unpickle anything; only for
    files you made yourself); CheckpointError naming the file otherwise."""
    obj = read_checkpoint(path, trust=trust)
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

    def remove_stale_temporaries(self) -> List[str]:
        """Delete the hidden temporary files of writes that a killed process left half done
        (``.<name>.<random>.tmp``, see ``libs.utils.io.atomic_open``); returns their paths."""
        stale = sorted(glob.glob(os.path.join(glob.escape(self.folder), ".*.pth*.tmp")))
        for path in stale:
            os.remove(path)
            logger.info(f"removed {path}, left by an interrupted write")
        return stale

    def find_resumable(self) -> Optional[Tuple[str, Dict[str, Any]]]:
        """The newest readable snapshot ``(path, state)``; unreadable ones are skipped with a warning.
        Temporary files of interrupted writes are removed first."""
        self.remove_stale_temporaries()
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
