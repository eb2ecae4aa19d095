"""Video files -> feature stores: decode on the grid, run a backbone in batches, write atomically.

``extract_features`` turns one file into a ``(T, C)`` float32 array (all or nothing: an error
anywhere in the file leaves no array). ``extract_to_store`` does it for many files into a feature
store keyed by file name without extension (the ``video_id`` / ``clip_uid`` annotations name),
resumably: ids the store holds are skipped, each finished video is merged into the store at
once (``libs.datasets.store_append``), and a JSON sidecar ``<dst>.videos.json`` records the grid,
the backbone and each video's decoded duration (what an annotation's ``duration`` should say).
A store is never extended with features of another grid or backbone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from libs.core.errors import ConfigError, DataError
from libs.datasets.store_append import VIDEO_FIELD, append_arrays, resolve_kind, stored_ids
from libs.utils.amp import autocast
from libs.utils.io import save_json
from libs.video.backbones import VideoBackbone
from libs.video.decode import VideoError, VideoWindows, probe
from libs.video.grid import FeatureGrid

DEFAULT_BATCH_SIZE = 16  # windows per backbone call
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


def sidecar_path(dst: str) -> str:
    return dst.rstrip("/" + os.sep) + ".videos.json"


def promised_grid_frames(path: str, grid: FeatureGrid) -> int:
    """Grid frames the file's header promises (a progress bar's total); 0 when the header gives
    no duration or the file cannot be opened (extraction then says why)."""
    try:
        duration = probe(path).duration
    except VideoError:
        return 0
    return grid.num_grid_frames(duration) if duration else 0


def extract_features(path: str, backbone: VideoBackbone, grid: FeatureGrid,
                     batch_size: int = DEFAULT_BATCH_SIZE, amp: Optional[str] = None,
                     progress: Any = None) -> Tuple[np.ndarray, float]:
    """``(features, duration)``: ``(T, backbone.dim)`` float32 features of ``path``, row ``i``
    from grid window ``i``, and the decoded length in seconds.

    ``progress``: a tqdm bar advanced by the grid frames each batch covers.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    rows: List[np.ndarray] = []
    batch: List[np.ndarray] = []

    def flush() -> None:
        windows = torch.from_numpy(np.stack(batch))  # (N, F, S, S, 3) uint8
        with autocast(backbone.device, amp):
            rows.append(backbone.encode(windows).float().cpu().numpy())
        if progress is not None:
            progress.update(len(batch) * grid.num_frames)
        batch.clear()

    video = VideoWindows(path, grid, backbone.frame_size)
    for _, frames in video:
        batch.append(frames)
        if len(batch) == int(batch_size):
            flush()
    if batch:
        flush()
    features = np.concatenate(rows).astype(np.float32, copy=False)
    if features.shape[1] != backbone.dim or not np.isfinite(features).all():
        raise DataError(f"{path}: backbone {backbone.name!r} returned {features.shape[1]}-wide or "
                        f"non-finite features; expected finite {backbone.dim}-wide rows")
    return features, float(video.duration)


def video_ids(paths: Iterable[str]) -> List[Tuple[str, str]]:
    """``(id, path)`` per video file: the file name without extension, unique across ``paths``.

    A folder stands for the video files directly inside it (sorted).
    """
    files: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(sorted(os.path.join(path, name) for name in os.listdir(path)
                                if name.lower().endswith(VIDEO_SUFFIXES)))
        else:
            files.append(path)
    seen: Dict[str, str] = {}
    for path in files:
        video_id = os.path.splitext(os.path.basename(path))[0]
        if video_id in seen and seen[video_id] != path:
            raise ConfigError(f"two videos would get the id {video_id!r}: {seen[video_id]} and {path}; "
                              f"rename one (ids are file names without extension)")
        seen[video_id] = path
    return list(seen.items())


@dataclass
class ExtractionSummary:
    written: List[str] = field(default_factory=list)
    already_present: List[str] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)


def _read_sidecar(dst: str, grid: FeatureGrid, backbone: VideoBackbone) -> Dict[str, Any]:
    """The sidecar of an existing store, checked to describe the same grid and backbone."""
    header = {"grid": asdict(grid), "backbone": backbone.name, "backbone_identity": backbone.identity(),
              "dim": backbone.dim, "videos": {}}
    path = sidecar_path(dst)
    if not os.path.isfile(path):
        return header
    try:
        with open(path) as f:
            existing = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the extraction record ({e})") from e
    for key in ("grid", "backbone_identity", "dim"):
        if existing.get(key) != header[key]:
            raise ConfigError(f"{dst} holds features with {key} {existing.get(key)!r} (recorded in {path}); "
                              f"this run makes {header[key]!r}: write to another store")
    return existing


def extract_to_store(paths: Sequence[str], dst: str, backbone: VideoBackbone, grid: FeatureGrid,
                     dst_kind: Optional[str] = "hdf5", dtype: str = "float32",
                     batch_size: int = DEFAULT_BATCH_SIZE, amp: Optional[str] = None,
                     skip_bad: bool = False, progress: bool = True) -> ExtractionSummary:
    """Extract every video of ``paths`` (files or folders) not yet in store ``dst``.

    A bad video raises its ``VideoError`` (the videos before it stay written) unless
    ``skip_bad``, which records it in the summary and goes on with the next.
    """
    from tqdm import tqdm

    kind = resolve_kind(dst, dst_kind)
    record = _read_sidecar(dst, grid, backbone)
    done = stored_ids(dst, kind)
    summary = ExtractionSummary()
    videos = video_ids(paths)
    summary.already_present = [video_id for video_id, _ in videos if video_id in done]
    todo = [(video_id, path) for video_id, path in videos if video_id not in done]
    total = sum(promised_grid_frames(path, grid) for _, path in todo)  # the bar counts grid frames
    with tqdm(total=total or None, unit="frame", unit_scale=True, desc=f"{backbone.name} -> {os.path.basename(dst)}",
              disable=not progress) as bar:
        for video_id, path in todo:
            bar.set_postfix_str(os.path.basename(path))
            try:
                features, duration = extract_features(path, backbone, grid, batch_size, amp, progress=bar)
            except VideoError as e:
                if not skip_bad:
                    raise
                summary.failed.append((path, str(e)))
                continue
            append_arrays(dst, [(video_id, features)], kind, dtype=dtype, field=VIDEO_FIELD)
            record["videos"][video_id] = {"file": os.path.abspath(path), "num_features": int(features.shape[0]),
                                          "duration_s": round(duration, 6)}
            save_json(record, sidecar_path(dst), indent=1)
            summary.written.append(video_id)
    return summary
