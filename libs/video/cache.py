"""Features of a video file, computed once: cached by the file's content, the backbone and the grid.

Asking a second question about the same video (``tools/ground.py --video``, ``Grounder.ground_video``)
reads the features from ``<cache_dir>/<file sha256>-<backbone+grid sha256>.npz`` instead of decoding
again. The key is the file's bytes, not its name, so an edited or replaced file is extracted
anew; the backbone's ``identity()`` (its weights file's hash, its options) and the grid are part
of the key, so features of another backbone or grid are never mixed up. Written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from typing import Optional, Tuple

import numpy as np

from libs.utils.io import atomic_open
from libs.video.backbones import VideoBackbone, file_fingerprint
from libs.video.decode import VideoError
from libs.video.extract import DEFAULT_BATCH_SIZE, extract_features, promised_grid_frames
from libs.video.grid import FeatureGrid

CACHE_ENV = "GROUNDNLQ_CACHE"


def default_cache_dir() -> str:
    """``$GROUNDNLQ_CACHE/video_features``, else ``~/.cache/groundnlq/video_features``."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "groundnlq")
    return os.path.join(root, "video_features")


def cache_key(path: str, backbone: VideoBackbone, grid: FeatureGrid) -> str:
    recipe = json.dumps({"backbone": backbone.identity(), "grid": asdict(grid)}, sort_keys=True)
    return f"{file_fingerprint(path)[:32]}-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"


def cached_features(path: str, backbone: VideoBackbone, grid: FeatureGrid, cache_dir: Optional[str] = None,
                    batch_size: int = DEFAULT_BATCH_SIZE, amp: Optional[str] = None,
                    progress: bool = True) -> Tuple[np.ndarray, float]:
    """``(features (T, C), duration s)`` of ``path``: from the cache, or extracted and cached."""
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such video file")
    folder = cache_dir or default_cache_dir()
    entry = os.path.join(folder, cache_key(path, backbone, grid) + ".npz")
    if os.path.isfile(entry):
        with np.load(entry) as stored:
            return stored["features"], float(stored["duration"])
    from tqdm import tqdm

    total = promised_grid_frames(path, grid) or None
    with tqdm(total=total, unit="frame", unit_scale=True, desc=os.path.basename(path), disable=not progress) as bar:
        features, duration = extract_features(path, backbone, grid, batch_size, amp, progress=bar)
    with atomic_open(entry, "wb") as f:
        np.savez(f, features=features, duration=np.float64(duration))
    return features, duration
