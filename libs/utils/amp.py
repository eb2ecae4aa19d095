"""Mixed precision, named the way configs and command lines name it: "none", "bf16", "fp16".

One place maps the names to dtypes and builds the autocast context, for training (CUDA only,
``trainer.amp``), inference (``eval.py --amp``, ``Grounder(amp=...)``) and video extraction.
Importing it does not import torch, so command lines can list the choices cheaply.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

from libs.core.errors import ConfigError

# name -> the torch dtype attribute it stands for
AMP_DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16"}
AMP_CHOICES = ("none", *AMP_DTYPE_NAMES)


def check_amp(amp: Optional[str], what: str = "amp") -> Optional[str]:
    """``amp`` as None (float32) or a key of ``AMP_DTYPE_NAMES``; anything else is a ``ConfigError``."""
    if amp in (None, "none"):
        return None
    if amp not in AMP_DTYPE_NAMES:
        raise ConfigError(f"{what}: expected one of {list(AMP_CHOICES)}, got {amp!r}")
    return amp


def autocast(device: Any, amp: Optional[str]) -> Any:
    """``torch.autocast`` on ``device``'s type in ``amp``'s dtype; a no-op for float32."""
    amp = check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, AMP_DTYPE_NAMES[amp]))
