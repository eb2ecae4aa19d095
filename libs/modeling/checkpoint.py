"""Loading model weights from reference checkpoints and our own.

Accepted layouts: ``{epoch, state_dict, optimizer, scheduler, state_dict_ema, ...}`` (reference
and this project's epoch checkpoints), ``{model: ...}`` (snapshots) or a bare state dict; keys
with or without DDP's ``module.`` prefix. Files are read with ``torch.load(weights_only=True)``
(plus a small allow-list of NumPy scalar types); arbitrary unpickling needs ``trust=True``.
Problems are reported by name in a ``CheckpointError``.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from ..core.errors import CheckpointError

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
