"""Mixed-precision names: one mapping for training, inference and extraction."""
import contextlib

import pytest
import torch

from libs.core.errors import ConfigError
from libs.utils.amp import autocast, check_amp


def test_names_map_to_autocast_dtypes():
    assert check_amp(None) is None and check_amp("none") is None and check_amp("bf16") == "bf16"
    assert isinstance(autocast("cpu", "none"), contextlib.nullcontext)
    with autocast("cpu", "bf16"):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == torch.bfloat16


def test_unknown_name_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match=r"trainer.amp: expected one of \['none', 'bf16', 'fp16'\], got 'fp8'"):
        check_amp("fp8", "trainer.amp")
