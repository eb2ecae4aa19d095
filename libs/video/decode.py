"""Decode a video file into the frame windows of a feature grid (PyAV, any format FFmpeg reads).

``VideoWindows(path, grid, size)`` streams the file once and yields, per feature ``i``, the
``num_frames`` frames the grid samples (``grid.sample_times(i)``): at each sample instant the frame
on screen then (the last decoded frame whose timestamp is not later), so any file frame rate is
resampled to the grid's. Frames are scaled so the shorter side is ``size`` and centre-cropped to
``size x size`` RGB (what image backbones take). Memory holds only the windows being filled.

The video's length is what decodes (last frame's time plus one frame period), not the header's;
a file that decodes to less than its header promises is reported as truncated. Every problem is a
``VideoError`` naming the file, raised before any feature of that file is returned in full.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from typing import Any, Deque, Iterator, List, Optional, Tuple

import numpy as np

from libs.core.errors import DataError, missing_package
from libs.video.grid import FeatureGrid

INSTALL_HINT = "pip install -e .[video]"
# a frame stamped up to 1 ms after a sample instant counts as shown at that instant: containers
# such as Matroska store timestamps in milliseconds, so a 30 fps frame due at 0.0667 s is stamped
# 0.067 s, and a grid sampling at the file's own rate would otherwise take the frame before it
_TIME_EPS = 1e-3
# a file decoding this much shorter than its header's duration is truncated (frame-period jitter
# and containers that round durations stay well inside)
TRUNCATION_TOLERANCE_S = 0.5


class VideoError(DataError):
    """A video file cannot be turned into features (unreadable, no video stream, no frames,
    truncated, shorter than one feature window)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _import_av() -> Any:
    try:
        import av
    except ImportError as e:
        raise missing_package("av", "decoding video (PyAV)", INSTALL_HINT) from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What a file's header says about its first video stream."""

    path: str
    duration: Optional[float]  # seconds; None when the container does not say
    fps: Optional[float]       # the stream's average frame rate
    width: int
    height: int



def _open(path: str) -> Tuple[Any, Any]:
    """``(container, first video stream)`` or a ``VideoError`` naming the file."""
    av = _import_av()
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such video file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: the file is empty (0 bytes)")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot be read as a video ({_first_line(e)})") from e
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise VideoError(f"{path}: has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads: decoding overlaps the backbone
    return container, stream


def _info(path: str, container: Any, stream: Any) -> VideoInfo:
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # microseconds (AV_TIME_BASE)
    rate = stream.average_rate or stream.guessed_rate
    return VideoInfo(path=path, duration=duration, fps=float(rate) if rate else None,
                     width=int(stream.codec_context.width), height=int(stream.codec_context.height))


def probe(path: str) -> VideoInfo:
    """Header facts of ``path`` (no decoding)."""
    container, stream = _open(path)
    try:
        return _info(path, container, stream)
    finally:
        container.close()


def _scaled_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """Width and height with the shorter side ``size``, aspect ratio kept."""
    if width <= height:
        return size, max(size, int(round(height * size / width)))
    return max(size, int(round(width * size / height))), size


def _to_rgb(frame: Any, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: scaled (area averaging) so the shorter side is ``size``, centre crop."""
    width, height = _scaled_size(frame.width, frame.height, size)
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


class _Window:
    __slots__ = ("index", "times", "frames")

    def __init__(self, index: int, grid: FeatureGrid) -> None:
        self.index = index
        self.times = grid.sample_times(index)
        self.frames: List[np.ndarray] = []

    def complete(self) -> bool:
        return len(self.frames) == len(self.times)


class VideoWindows:
    """Iterate ``(i, frames)`` for every feature ``i`` of ``path`` in order, ``frames``
    ``(num_frames, size, size, 3)`` uint8; afterwards ``duration`` holds the decoded length in
    seconds. A problem with the file raises ``VideoError`` during iteration."""

    def __init__(self, path: str, grid: FeatureGrid, size: int) -> None:
        self.path, self.grid, self.size = path, grid, int(size)
        self.duration: Optional[float] = None

    def __iter__(self) -> Iterator[Tuple[int, np.ndarray]]:
        path, grid, size = self.path, self.grid, self.size
        av = _import_av()
        container, stream = _open(path)
        info = _info(path, container, stream)
        pending: Deque[_Window] = collections.deque()  # started, in index order
        ready: Deque[_Window] = collections.deque()    # complete, waiting until the video is known to hold them
        next_index = 0
        previous = None   # the decoded frame not yet used: it shows until the next frame's time
        previous_time = 0.0

        def show(frame: Any, until: float) -> None:
            """``frame`` is on screen for every sample instant before ``until``."""
            nonlocal next_index
            while grid.sample_times(next_index)[0] < until - _TIME_EPS:
                pending.append(_Window(next_index, grid))
                next_index += 1
            image = None
            for window in pending:
                while not window.complete() and window.times[len(window.frames)] < until - _TIME_EPS:
                    if image is None:
                        image = _to_rgb(frame, size)
                    window.frames.append(image)
            while pending and pending[0].complete():
                ready.append(pending.popleft())

        def release(known_frames: int) -> Iterator[Tuple[int, np.ndarray]]:
            """Windows that fit in ``known_frames`` grid frames (the video lasts at least that long)."""
            while ready and ready[0].index * grid.feat_stride + grid.num_frames <= known_frames + 1e-6:
                window = ready.popleft()
                yield window.index, np.stack(window.frames)

        try:
            try:
                for frame in container.decode(stream):
                    if frame.time is None:
                        continue
                    time = float(frame.time)
                    if previous is not None:
                        show(previous, time)
                        yield from release(grid.num_grid_frames(time))
                    previous, previous_time = frame, time
            except av.FFmpegError as e:
                raise VideoError(f"{path}: decoding failed after {previous_time:.2f} s "
                                 f"({_first_line(e)}); the file may be truncated or damaged") from e
            if previous is None:
                raise VideoError(f"{path}: no video frames could be decoded")
            period = 1.0 / info.fps if info.fps else 0.0
            duration = previous_time + period
            if info.duration is not None and duration < info.duration - TRUNCATION_TOLERANCE_S:
                raise VideoError(f"{path}: decodes to {duration:.2f} s of the {info.duration:.2f} s its "
                                 f"header declares; the file is truncated")
            if grid.num_features(duration) == 0:
                raise VideoError(f"{path}: {duration:.2f} s is shorter than one feature window "
                                 f"({grid.num_frames} frames at {grid.fps:g} fps = {grid.min_duration():.2f} s)")
            self.duration = duration
            show(previous, duration)
            yield from release(grid.num_grid_frames(duration))
        finally:
            container.close()

