"""Per-worker seeding of DataLoader workers."""
from __future__ import annotations

import os
import random
import numpy as np
import torch


def worker_init_fn(worker_id: int) -> None:
    """Seed NumPy, ``random`` and ``PYTHONHASHSEED`` in a DataLoader worker.

    PyTorch already gives every worker a distinct ``torch.initial_seed()`` (derived from the
    loader's generator), but NumPy and ``random`` would otherwise share the parent's state in every
    forked worker, so jittering and cropping would repeat across workers.
    """
    seed = torch.initial_seed() % 2**31
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
