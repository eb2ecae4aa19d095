"""Ask a question, get moments: ground free-form questions in a clip with a trained model.

The reference can only evaluate a fixed annotation file. ``Grounder`` takes a trained model, the
text encoder its text features were made with, and a clip (an id in a feature store, or a
``(T, C_v)`` array), and returns windows in seconds with scores for any question::

    g = Grounder.from_checkpoint("configs/demo_worded.yaml", "ckpt/.../model_best.pth.tar")
    answer = g.ground(clip_uid, "where did I put the scissors?", top_k=5)
    answers = g.ground_many(clip_uid, ["where is my phone?", "did I leave the pan open?"])
    answers = g.ground_video("my_video.mp4", ["when did I see the red circle?"])

``ground_video`` extracts the file's features with the backbone that made the training features
(``dataset.video_backbone``) on the config's feature grid, caches them (``libs.video.cache``), and
grounds the questions in them; windows are clamped to the decoded video's length.

The text encoder must be the one that made the training text features, so it is read from the
config (``dataset.text_encoder``); a different name, or a width that is not the model's
``input_txt_dim``, is a ``ConfigError``. ``ground_many`` batches the questions: they are encoded
together and the clip is embedded once per batch (the model's video-centric ``Batch``); the
results are the same as asking one question at a time (the model's text padding never depends
on the batch).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from libs.core.config import load_config
from libs.core.errors import ConfigError, DataError
from libs.datasets.feature_store import FeatureStore, open_store
from libs.datasets.text_encoders import TextEncoder, make_text_encoder
from libs.evaluation.postprocess import results_of_heads
from libs.engine.checkpoint import load_checkpoint
from libs.modeling.models import make_meta_arch
from libs.utils.amp import autocast, check_amp
from libs.video.backbones import VideoBackbone, make_video_backbone

ClipInput = Union[str, np.ndarray, torch.Tensor]
DEFAULT_TOP_K = 5
# questions per forward pass of ground_many (bounds memory: activations grow with Q x T)
DEFAULT_QUESTION_BATCH = 32
FEATURE_FILE_SUFFIXES = (".npy", ".pt", ".pth")


@dataclass(frozen=True)
class Moment:
    """One window of a clip that answers a question: seconds from the clip start, and a score."""

    start: float
    end: float
    score: float


@dataclass
class Answer:
    """A question's windows, best first."""

    question: str
    clip: str
    duration: float
    moments: List[Moment]

    def windows(self) -> np.ndarray:
        """``(K, 2)`` float64 seconds."""
        return np.array([[m.start, m.end] for m in self.moments], dtype=np.float64).reshape(-1, 2)

    def scores(self) -> np.ndarray:
        """``(K,)`` float64."""
        return np.array([m.score for m in self.moments], dtype=np.float64)

    def to_dict(self) -> Dict[str, Any]:
        return {"question": self.question, "clip": self.clip, "duration": self.duration,
                "moments": [{"start": m.start, "end": m.end, "score": m.score} for m in self.moments]}


def load_features_file(path: str) -> np.ndarray:
    """One clip's ``(T, C_v)`` features from a ``.npy`` or ``.pt``/``.pth`` file (array or tensor)."""
    if not os.path.isfile(path):
        raise DataError(f"feature file {path} does not exist")
    try:
        if path.lower().endswith(".npy"):
            value = np.load(path, allow_pickle=False)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or truncated file: numpy / pickle / zip errors
        raise DataError(f"feature file {path}: cannot read a (T, C) array from it ({err})") from None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise DataError(f"feature file {path}: expected a (T, C) array or tensor, got {type(value).__name__}")
    return value


def resolve_text_encoder(configured: Optional[str], text_encoder: Union[None, str, TextEncoder],
                         source: str, **encoder_options: Any) -> TextEncoder:
    """The encoder to use: the one given, else the config's; a different name than the config's is an error."""
    if isinstance(text_encoder, TextEncoder):
        name = text_encoder.name
    else:
        name = text_encoder or configured
    if name is None:
        raise ConfigError(f"{source}: dataset.text_encoder is not set, so this model cannot take typed "
                          f"questions: nothing says which encoder made its training text features. Configs "
                          f"that name one can (configs/demo_worded.yaml: minilm); if you know it, add "
                          f"--opt dataset.text_encoder=minilm|clip (Python: text_encoder=)")
    if configured is not None and name != configured:
        raise ConfigError(f"{source}: the model was trained on {configured!r} text features "
                          f"(dataset.text_encoder), but the text encoder given is {name!r}")
    if isinstance(text_encoder, TextEncoder):
        return text_encoder
    return make_text_encoder(name, **encoder_options)


class Grounder:
    """A trained model, its text encoder and (optionally) a video feature store, ready for questions.

    Args:
        model: a ``LocPointTransformer`` with trained weights (put in eval mode here).
        text_encoder: the encoder of the training text features; its ``dim`` must be the model's
            ``input_txt_dim``.
        fps, feat_stride, num_frames: the video features' frame rate and stride / window in frames
            (the config's ``dataset.default_fps``, ``feat_stride``, ``num_frames``).
        video_store: where clip ids are looked up (path or open ``FeatureStore``); None = only
            feature arrays can be grounded.
        question_batch: questions per forward pass in ``ground_many``.
        video_backbone: the ``libs.video`` backbone of the training features (its ``dim`` must be
            the model's ``input_vid_dim``), or a function that builds it on first use, for
            ``ground_video``; None = video files cannot be grounded.
        amp: "bf16" / "fp16" runs the network under autocast (decoding and NMS in float32);
            None = float32.
    """

    def __init__(self, model: torch.nn.Module, text_encoder: TextEncoder, *, fps: float, feat_stride: float,
                 num_frames: float, video_store: Union[None, str, FeatureStore] = None,
                 question_batch: int = DEFAULT_QUESTION_BATCH,
                 video_backbone: Union[None, VideoBackbone, Callable[[], VideoBackbone]] = None,
                 amp: Optional[str] = None) -> None:
        if text_encoder.dim != model.input_txt_dim:
            raise ConfigError(f"text encoder {text_encoder.name!r} gives {text_encoder.dim}-d token features, "
                              f"but the model expects input_txt_dim {model.input_txt_dim}: it was trained "
                              f"with another text encoder")
        if not fps or fps <= 0:
            raise ConfigError(f"dataset.default_fps must be a positive frame rate to convert windows to "
                              f"seconds, got {fps!r}")
        if int(question_batch) < 1:
            raise ConfigError(f"question_batch must be >= 1, got {question_batch!r}")
        self.model = model.eval()
        self.text_encoder = text_encoder
        self.fps, self.feat_stride, self.num_frames = float(fps), float(feat_stride), float(num_frames)
        self.question_batch = int(question_batch)
        self._video_store = open_store(video_store) if isinstance(video_store, str) else video_store
        self._video_backbone = video_backbone
        self.amp = check_amp(amp, "Grounder amp")
        if isinstance(video_backbone, VideoBackbone):
            self._backbone()  # checks its width now

    @classmethod
    def from_checkpoint(cls, config: Union[str, Mapping[str, Any]], checkpoint: str,
                        text_encoder: Union[None, str, TextEncoder] = None, *,
                        video_store: Union[None, str, FeatureStore] = None, use_ema: bool = False,
                        device: Optional[str] = None, overrides: Optional[List[str]] = None,
                        encoder_options: Optional[Dict[str, Any]] = None,
                        backbone_options: Optional[Dict[str, Any]] = None,
                        question_batch: int = DEFAULT_QUESTION_BATCH, amp: Optional[str] = None) -> "Grounder":
        """Build the model of ``config`` (a path, or a dict from ``load_config``), load ``checkpoint``,
        make the text encoder.

        ``text_encoder``: None = the config's ``dataset.text_encoder``; a name or an encoder must
        agree with it. ``encoder_options`` go to ``make_text_encoder`` (e.g. CLIP's
        ``weights_path``). ``video_store`` overrides ``dataset.video_feat_dir`` for clip ids.
        ``backbone_options`` go to ``make_video_backbone`` for the config's ``dataset.video_backbone``
        (built on the first ``ground_video``).
        ``device``: None = CUDA when available.
        """
        if isinstance(config, str):
            source = f"config {config}"
            cfg = load_config(config, overrides=overrides)
        else:
            source, cfg = "config", dict(config)
        dataset_cfg = cfg["dataset"]
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = make_meta_arch(cfg["model_name"], **cfg["model"])
        load_checkpoint(model, checkpoint, use_ema=use_ema, strict=True)
        model.to(device)
        encoder = resolve_text_encoder(dataset_cfg.get("text_encoder"), text_encoder, source,
                                       device=device, **(encoder_options or {}))
        store = video_store if video_store is not None else dataset_cfg.get("video_feat_dir")
        if isinstance(store, str) and not os.path.exists(store):
            if video_store is not None:
                raise DataError(f"video feature store {store} does not exist")
            store = None  # the config's store is missing: arrays still work, ids raise on use
        backbone = dataset_cfg.get("video_backbone")
        build_backbone = (functools.partial(make_video_backbone, backbone, device=device, **(backbone_options or {}))
                          if backbone else None)
        return cls(model, encoder, fps=dataset_cfg["default_fps"], feat_stride=dataset_cfg["feat_stride"],
                   num_frames=dataset_cfg["num_frames"], video_store=store, question_batch=question_batch,
                   video_backbone=build_backbone, amp=amp)

    # ------------------------------------------------------------------ inputs
    def clip_features(self, clip: ClipInput) -> Tuple[str, torch.Tensor]:
        """``(name, (C_v, T) float32)`` of a clip id (looked up in the video store) or a ``(T, C_v)`` array."""
        if isinstance(clip, str):
            if self._video_store is None:
                raise ConfigError(f"clip {clip!r}: no video feature store to look it up in (set "
                                  f"dataset.video_feat_dir, pass video_store=, or pass the features)")
            name, array = clip, self._video_store[clip]
        elif isinstance(clip, (np.ndarray, torch.Tensor)):
            name, array = "features", clip
        else:
            raise DataError(f"expected a clip id or a (T, C_v) feature array, got {type(clip).__name__}")
        if isinstance(array, np.ndarray):
            feats = torch.from_numpy(np.array(array, dtype=np.float32))  # a copy: store arrays may be read-only
        else:
            feats = array.detach().to("cpu", torch.float32)
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise DataError(f"clip {name!r}: expected time-major (T, C_v) video features, got shape "
                            f"{tuple(feats.shape)}")
        if feats.shape[1] != self.model.input_vid_dim:
            raise DataError(f"clip {name!r}: video features have {feats.shape[1]} channels, the model expects "
                            f"input_vid_dim {self.model.input_vid_dim} (features of another backbone?)")
        if not torch.isfinite(feats).all():
            raise DataError(f"clip {name!r}: video features contain NaN or Inf")
        return name, feats.t().contiguous()  # (C_v, T)

    def _backbone(self) -> VideoBackbone:
        """The video backbone of the training features (built on first use), width checked."""
        if self._video_backbone is None:
            raise ConfigError("the config does not name the video backbone its features came from "
                              "(dataset.video_backbone), so video files cannot be grounded here; extract "
                              "features with that backbone (feature_extraction/extract_video_features.py) "
                              "and pass them instead")
        if not isinstance(self._video_backbone, VideoBackbone):
            self._video_backbone = self._video_backbone()
        backbone = self._video_backbone
        if backbone.dim != self.model.input_vid_dim:
            raise ConfigError(f"video backbone {backbone.name!r} gives {backbone.dim}-d features, but the model "
                              f"expects input_vid_dim {self.model.input_vid_dim}: it was trained on another "
                              f"backbone's features")
        return backbone

    def video_features(self, path: str, cache_dir: Optional[str] = None,
                       progress: bool = True) -> Tuple[np.ndarray, float]:
        """``((T, C_v) features, duration s)`` of a video file on this model's grid (cached)."""
        from libs.video.cache import cached_features
        from libs.video.grid import FeatureGrid

        grid = FeatureGrid(fps=self.fps, feat_stride=self.feat_stride, num_frames=self.num_frames)
        return cached_features(path, self._backbone(), grid, cache_dir=cache_dir, progress=progress)

    def ground_video(self, path: str, questions: Sequence[str], top_k: int = DEFAULT_TOP_K,
                     cache_dir: Optional[str] = None, progress: bool = True) -> List[Answer]:
        """``ground_many`` on a video file: its features extracted (or read from the cache) first."""
        features, duration = self.video_features(path, cache_dir=cache_dir, progress=progress)
        name = os.path.splitext(os.path.basename(path))[0]
        return self.ground_many(features, questions, top_k=top_k, duration=duration, clip_name=name)

    def default_duration(self, num_feats: int) -> float:
        """Length in seconds covered by ``num_feats`` features (windows are clamped to it)."""
        return num_feats * self.feat_stride / self.fps

    def encode_questions(self, questions: Sequence[str]) -> List[torch.Tensor]:
        """Token features of each question, channel-first ``(C_t, L_i)`` float32."""
        for question in questions:
            if not isinstance(question, str) or not question.strip(" .?"):
                raise DataError(f"expected a non-empty question string, got {question!r}")
        tokens = self.text_encoder.encode_tokens(list(questions))  # per question (L_i, C_t)
        return [torch.from_numpy(np.ascontiguousarray(t.T, dtype=np.float32)) for t in tokens]

    # ------------------------------------------------------------------ grounding
    def ground(self, clip: ClipInput, question: str, top_k: int = DEFAULT_TOP_K,
               duration: Optional[float] = None, clip_name: Optional[str] = None) -> Answer:
        """The ``top_k`` windows (seconds, best first) of ``clip`` that answer ``question``."""
        return self.ground_many(clip, [question], top_k=top_k, duration=duration, clip_name=clip_name)[0]

    @torch.no_grad()
    def ground_many(self, clip: ClipInput, questions: Sequence[str], top_k: int = DEFAULT_TOP_K,
                    duration: Optional[float] = None, clip_name: Optional[str] = None) -> List[Answer]:
        """``ground`` for several questions about one clip, batched (same windows, less work).

        ``duration`` (s) clamps the windows; None = the length the features cover. ``clip_name``
        names a feature array in the answers (default: the clip id, or "features").
        """
        if isinstance(questions, str):
            raise DataError("ground_many expects a list of questions; use ground() for one question")
        if int(top_k) < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k!r}")
        if len(questions) == 0:
            return []
        name, feats = self.clip_features(clip)
        name = clip_name or name
        duration = float(duration) if duration is not None else self.default_duration(feats.shape[1])
        tokens = self.encode_questions(questions)
        answers: List[Answer] = []
        for first in range(0, len(questions), self.question_batch):
            chunk = range(first, min(first + self.question_batch, len(questions)))
            items = [self._item(name, feats, duration, i, questions[i], tokens[i]) for i in chunk]
            for i, result in zip(chunk, self._predict(items, int(top_k))):
                moments = [Moment(float(s), float(e), float(c))
                           for (s, e), c in zip(result["segments"].tolist(), result["scores"].tolist())]
                answers.append(Answer(question=questions[i], clip=name, duration=duration, moments=moments))
        return answers

    def _item(self, name: str, feats: torch.Tensor, duration: float, index: int, question: str,
              tokens: torch.Tensor) -> Dict[str, Any]:
        """A dataset-layout item; every item of a clip holds the same ``feats`` tensor, so the
        collate gives the clip one video row (embedded once) for all its questions."""
        return {"video_id": name, "feats": feats, "fps": self.fps, "duration": duration,
                "feat_stride": self.feat_stride, "feat_num_frames": self.num_frames,
                "segments": None, "one_hot_labels": None, "query_id": f"q{index}", "query": question,
                "query_feats": tokens}

    def _predict(self, items: List[Dict[str, Any]], top_k: int) -> List[Dict[str, Any]]:
        """The model's eval path (heads, decoding, NMS) keeping ``top_k`` windows per question."""
        model = self.model
        device = next(model.parameters()).device
        batch = model.collator(is_training=False)(items).to(device)
        with autocast(device, self.amp):
            heads = model(batch)
        return results_of_heads(heads.float(), batch.meta, {**model.test_cfg, "max_seg_num": top_k})
