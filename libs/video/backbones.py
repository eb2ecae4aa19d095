"""Video backbones: frame windows in, one feature vector per window out.

The contract a backbone (yours too: EgoVLP, InternVideo, SlowFast...) follows:

* ``frame_size``: frames arrive scaled so the shorter side is ``frame_size`` and centre-cropped
  to ``frame_size x frame_size`` (``libs.video.decode``);
* ``encode(windows)``: ``windows`` is ``(N, F, S, S, 3)`` uint8 RGB, N windows of the feature
  grid's ``num_frames`` F frames each (``libs.video.grid``); returns ``(N, dim)`` float, row ``n``
  the feature of window ``n``, independent of the other rows (so batching never changes results);
* ``dim``: the feature width, which the model's ``input_vid_dim`` must equal;
* ``identity()``: a string that changes whenever the features would (weights file, options),
  used to cache extracted features.

Register with ``@VIDEO_BACKBONES.register("name")``; build with ``make_video_backbone(name, **options)``.
Several backbones' features are joined along channels with ``feature_extraction/concat_features.py``.
"""
from __future__ import annotations

import hashlib
from typing import Any, Optional

import torch

from libs.core.errors import ConfigError
from libs.core.registry import Registry
from libs.datasets import openai_clip

VIDEO_BACKBONES = Registry("video backbone")

# OpenAI CLIP's image normalisation (its preprocessing's Normalize)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def file_fingerprint(path: str) -> str:
    """sha256 of a file's bytes (weights files identify the features they make)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class VideoBackbone:
    """Base class: subclasses set ``name``, ``frame_size``, ``dim`` and implement ``encode``."""

    name = ""
    frame_size = 0
    dim = 0

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def identity(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, frame_size={self.frame_size})"


@VIDEO_BACKBONES.register("clip")
class ClipImageBackbone(VideoBackbone):
    """CLIP's ViT image tower on every frame, ``image_embeds`` averaged over the window's frames.

    ``weights_path``: OpenAI's CLIP file (``ViT-B-32.pt``, read locally, never downloaded), run
    by ``transformers`` (``libs.datasets.openai_clip``). ``random_init_seed`` instead builds the
    ViT-B/32 architecture with seeded random weights: the same features on every machine,
    offline, for demos and tests (not meaningful image features). Frames are scaled by area
    averaging (OpenAI uses bicubic resampling), then normalised with CLIP's mean and std.
    """

    name = "clip"

    def __init__(self, weights_path: Optional[str] = None, random_init_seed: Optional[int] = None,
                 device: str = "cpu") -> None:
        super().__init__(device=device)
        if (weights_path is None) == (random_init_seed is None):
            raise ConfigError("the clip video backbone needs exactly one of a local weights file "
                              "(--clip-weights ViT-B-32.pt) or a random-init seed")
        self.weights_path, self.random_init_seed = weights_path, random_init_seed
        if weights_path is not None:
            state = openai_clip.read_openai_clip_weights(weights_path)
            self.model = openai_clip.vision_model_from_openai(state, weights_path)
        else:
            self.model = openai_clip.vit_b32_vision_model(seed=int(random_init_seed))
        self.model.to(self.device)
        self.frame_size = int(self.model.config.image_size)
        self.dim = int(self.model.config.projection_dim)
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    def identity(self) -> str:
        if self.weights_path is not None:
            return f"clip:{file_fingerprint(self.weights_path)}"
        return f"clip:random-vit-b-32:{self.random_init_seed}"

    @torch.no_grad()
    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        n, f, height, width, _ = windows.shape  # (N, F, S, S, 3)
        pixels = windows.to(self.device).reshape(n * f, height, width, 3).permute(0, 3, 1, 2)
        pixels = (pixels.float() / 255.0 - self.mean) / self.std  # (N * F, 3, S, S)
        embeds = self.model(pixel_values=pixels).image_embeds     # (N * F, dim)
        return embeds.float().view(n, f, -1).mean(dim=1)          # (N, dim)


@VIDEO_BACKBONES.register("thumbnail")
class ThumbnailBackbone(VideoBackbone):
    """Each window's frames averaged and area-scaled to ``size x size`` RGB, in [-1, 1]
    (``3 * size^2`` numbers: the colour layout of what was in view).

    The pixel demo's backbone: no weights, deterministic, thousands of frames per second on a
    CPU, and what the demo's questions ask (which coloured object was in view) lies in the colour
    layout. It is no substitute for a learned backbone on real video.
    """

    name = "thumbnail"

    def __init__(self, size: int = 8, device: str = "cpu") -> None:
        super().__init__(device=device)
        if int(size) < 1:
            raise ConfigError(f"thumbnail backbone: size must be >= 1, got {size!r}")
        self.frame_size = int(size)
        self.dim = 3 * self.frame_size ** 2

    def identity(self) -> str:
        return f"thumbnail:{self.frame_size}"

    @torch.no_grad()
    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        mean = windows.to(self.device).float().mean(dim=1)  # (N, S, S, 3)
        return (mean / 127.5 - 1.0).permute(0, 3, 1, 2).reshape(windows.shape[0], -1)  # channel-major


def make_video_backbone(name: str, **options: Any) -> VideoBackbone:
    """Build a registered video backbone (``"clip"``, ...) with its options."""
    if name not in VIDEO_BACKBONES:
        raise ConfigError(f"unknown video backbone {name!r}; expected one of {VIDEO_BACKBONES.names()}")
    backbone = VIDEO_BACKBONES.build(name, **options)
    if not (isinstance(backbone.frame_size, int) and backbone.frame_size > 0 and backbone.dim > 0):
        raise ConfigError(f"video backbone {name!r} must set a positive frame_size and dim, "
                          f"got {backbone.frame_size!r} and {backbone.dim!r}")
    return backbone
