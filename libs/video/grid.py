"""The feature grid a model reads: which video frames each feature covers.

The reference's datasets describe video features by three numbers (spec section 3): ``fps``
(frames per second the backbone saw), ``feat_stride`` (frames between consecutive features) and
``num_frames`` (frames one feature covers). Feature ``i`` covers grid frames
``[i * feat_stride, i * feat_stride + num_frames)``, frame ``g`` being the instant ``g / fps``
seconds; the decoder maps feature ``t`` back to ``(t * feat_stride + num_frames / 2) / fps``, the
centre of that window. Extraction follows the same rule, so features made here land where the
model expects them. Only whole windows are features: a video of ``D`` seconds has
``floor((floor(D * fps) - num_frames) / feat_stride) + 1`` of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Mapping

from libs.core.errors import ConfigError

# floor(D * fps) tolerates float noise in D * fps (30.000000001 frames is 30, 29.9999999 is 30)
_FRAME_EPS = 1e-6


@dataclass(frozen=True)
class FeatureGrid:
    """``fps`` grid frames per second; feature ``i`` covers ``num_frames`` grid frames from
    ``i * feat_stride`` (``feat_stride`` may be fractional, as the reference's 16.043)."""

    fps: float
    feat_stride: float
    num_frames: int

    def __post_init__(self) -> None:
        for name in ("fps", "feat_stride", "num_frames"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"feature grid: {name} must be a positive number, got {value!r}")
        if float(self.num_frames) != int(self.num_frames):
            raise ConfigError(f"feature grid: num_frames must be a whole number of frames, got {self.num_frames!r}")
        object.__setattr__(self, "num_frames", int(self.num_frames))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "FeatureGrid":
        """The grid of a resolved config's ``dataset`` section (``default_fps``, ``feat_stride``,
        ``num_frames``); a config without ``default_fps`` cannot place features in seconds."""
        dataset = config["dataset"]
        if dataset.get("default_fps") is None:
            raise ConfigError("dataset.default_fps is not set in this config: video extraction needs "
                              "the frame rate features are made at (e.g. --opt dataset.default_fps=30)")
        return cls(fps=float(dataset["default_fps"]), feat_stride=float(dataset["feat_stride"]),
                   num_frames=dataset["num_frames"])

    def num_grid_frames(self, duration: float) -> int:
        """Grid frames inside ``duration`` seconds."""
        return int(math.floor(duration * self.fps + _FRAME_EPS))

    def num_features(self, duration: float) -> int:
        """Whole windows inside ``duration`` seconds (0 when the video is shorter than one)."""
        frames = self.num_grid_frames(duration)
        if frames < self.num_frames:
            return 0
        return int(math.floor((frames - self.num_frames) / self.feat_stride + _FRAME_EPS)) + 1

    def sample_times(self, index: int) -> List[float]:
        """Seconds of the ``num_frames`` grid frames feature ``index`` covers, in order."""
        start = index * self.feat_stride
        return [(start + k) / self.fps for k in range(self.num_frames)]

    def centre_seconds(self, index: int) -> float:
        """Where the decoder places feature ``index`` (the window's centre)."""
        return (index * self.feat_stride + 0.5 * self.num_frames) / self.fps

    def min_duration(self) -> float:
        """Seconds of video one feature needs."""
        return self.num_frames / self.fps
