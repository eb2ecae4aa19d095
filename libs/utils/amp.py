"""Mixed precision, named the way configs and command lines name it: "none", "bf16", "fp16".

One place maps the names to dtypes and builds the autocast context, for training (CUDA only,
``trainer.amp``), inference (``eval.py --amp``, ``Grounder(amp=...)``) and video extraction.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Union

import torch

from libs.core.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("none", *AMP_DTYPES)


def check_amp(amp: Optional[str], what: str = "amp") -> Optional[str]:
    """``amp`` as None (float32) or a key of ``AMP_DTYPES``; anything else is a ``ConfigError``."""
    if amp in (None, "none"):
        return None
    if amp not in AMP_DTYPES:
        raise ConfigError(f"{what}: expected one of {list(AMP_CHOICES)}, got {amp!r}")
    return amp


def autocast(device: Union[str, torch.device], amp: Optional[str]) -> Any:
    """``torch.autocast`` on ``device``'s type in ``amp``'s dtype; a no-op for float32."""
    amp = check_amp(amp)
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])
