"""The GroundNLQ model (``"LocPointTransformer"``): a network from a ``Batch`` to losses (train
mode, through its ``Criterion``) or raw head outputs (eval mode; ``libs.evaluation.postprocess``
turns them into windows).

Video-centric: each distinct clip of a ``Batch`` is embedded once (convs + position encoding and
the first stem block's self-attention, the query-independent parts under early fusion) and
expanded to its queries with ``index_select``; the text branch and everything after run per query.

The reference's ``model(video_list)`` (a list of dataset items) still works: ``forward`` collates
it with the model's padding rules and, in eval mode, post-processes to per-query results.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..core.config import DEFAULTS
from ..core.errors import ConfigError, DataError
from ..datasets.collate import TEXT_PAD_MODES, VIDEO_PAD_MODES, Batch, BatchCollator, largest_stride
from . import losses, targets
from .attention import LOCAL_ATTENTION_KERNELS, LocalMaskedMHCA, MaskedMHA
from .backbones import pyramid_lengths
from .blocks import LayerNorm
from .transformer import TransformerBlock
from .heads import ClsHead, RegHead
from .models import make_backbone, make_generator, make_neck, register_meta_arch

Tensor = torch.Tensor

# the train_cfg / test_cfg defaults (spec section 2, plus this project's keys); a config's values override them
DEFAULT_TRAIN_CFG: Dict[str, Any] = DEFAULTS["train_cfg"]
DEFAULT_TEST_CFG: Dict[str, Any] = DEFAULTS["test_cfg"]


class HeadOutputs(NamedTuple):
    """Raw head outputs of a batch of Q queries (levels in order 0..L-1)."""

    points: List[Tensor]  # per level (T_l, 4): t, lo, hi, stride
    fpn_masks: List[Tensor]  # per level (Q, T_l) bool
    cls_logits: List[Tensor]  # per level (Q, T_l, num_classes)
    offsets: List[Tensor]  # per level (Q, T_l, 2), stride units

    def float(self) -> "HeadOutputs":
        """The same outputs in float32 (decoding after a bf16/fp16 autocast forward)."""
        return HeadOutputs(self.points, self.fpn_masks, [x.float() for x in self.cls_logits],
                           [x.float() for x in self.offsets])


@register_meta_arch("LocPointTransformer")
class LocPointTransformer(nn.Module):
    """Single-stage point-based temporal grounding (reference ``PtTransformer``).

    Takes the reference's model keyword arguments (``cfg["model"]``) plus this project's
    ``video_pad_mode`` ("exact" | "reference"), ``text_pad_mode`` ("at_least_one" | "reference")
    (see ``libs.datasets.collate`` for the padding rules), ``trim_pyramid`` (with "exact" video
    padding, run every pyramid level at its valid length plus one padded column instead of
    ``T / s_l``: same valid outputs, ~12% fewer FLOPs at 900 features; see
    ``backbones.pyramid_lengths``) and kernel switches that keep the numbers (to float32
    rounding) but not the reference's cost:
    ``use_sdpa`` (fused attention), ``local_attn_impl`` ("blocked" block GEMMs, the fastest;
    "banded" shifted products; "chunked" the reference's overlapping chunks),
    ``fused_layer_norm`` (the one-pass channel LayerNorm kernel, ``fused_layer_norm.py``),
    ``chunked_mlp`` (the transformer MLPs in cache-sized column chunks, ``blocks.chunked_mlp``),
    ``text_side_cross_attn`` (the cross-attention's query and output projections applied to the
    short text, ``MaskedMHA``) and ``compile`` (False | True = inductor | a ``torch.compile``
    backend name). ``sparse_reg_head``: in training,
    run the regression head only around the positive points, where the loss reads it (same losses
    and gradients; see ``RegHead.forward_at``).
    """

    def __init__(
        self,
        *,
        backbone_type: str = "convTransformer",
        fpn_type: str = "identity",
        backbone_arch: Sequence[int] = (2, 2, 2, 0, 6),
        scale_factor: int = 2,
        input_vid_dim: int = 2304,
        input_txt_dim: int = 512,
        max_seq_len: int = 2560,
        max_buffer_len_factor: float = 4.0,
        n_head: int = 4,
        n_mha_win_size: Union[int, Sequence[int]] = -1,
        embd_kernel_size: int = 3,
        embd_dim: int = 512,
        embd_with_ln: bool = True,
        fpn_dim: int = 512,
        fpn_with_ln: bool = True,
        fpn_start_level: int = 0,
        head_dim: int = 512,
        regression_range: Sequence[Sequence[float]] = ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)),
        head_num_layers: int = 3,
        head_kernel_size: int = 3,
        head_with_ln: bool = True,
        use_abs_pe: bool = False,
        use_rel_pe: bool = False,
        num_classes: int = 1,
        train_cfg: Optional[Dict[str, Any]] = None,
        test_cfg: Optional[Dict[str, Any]] = None,
        video_pad_mode: str = "exact",
        text_pad_mode: str = "at_least_one",
        trim_pyramid: bool = True,
        use_sdpa: bool = True,
        local_attn_impl: str = "blocked",
        fused_layer_norm: bool = True,
        chunked_mlp: bool = True,
        text_side_cross_attn: bool = True,
        sparse_reg_head: bool = True,
        compile: Union[bool, str] = False,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(_unknown_keys_message(unknown))
        self.train_cfg = {**DEFAULT_TRAIN_CFG, **(train_cfg or {})}
        self.test_cfg = {**DEFAULT_TEST_CFG, **(test_cfg or {})}
        _validate(backbone_arch, n_head, embd_dim, num_classes, video_pad_mode, text_pad_mode, self.train_cfg)
        if local_attn_impl not in LOCAL_ATTENTION_KERNELS:
            raise ConfigError(
                f"model.local_attn_impl: expected one of {tuple(LOCAL_ATTENTION_KERNELS)}, got {local_attn_impl!r}"
            )
        for key, value in (("trim_pyramid", trim_pyramid), ("sparse_reg_head", sparse_reg_head),
                           ("fused_layer_norm", fused_layer_norm), ("chunked_mlp", chunked_mlp),
                           ("text_side_cross_attn", text_side_cross_attn)):
            if not isinstance(value, bool):
                raise ConfigError(f"model.{key}: expected true or false, got {value!r}")
        if not isinstance(compile, (bool, str)) or compile == "":
            raise ConfigError(f"model.compile: expected false, true or a torch.compile backend name, got {compile!r}")
        self.compile_backend: Optional[str] = ("inductor" if compile is True else compile) or None

        num_levels = 1 + backbone_arch[3] + backbone_arch[4]
        self.fpn_strides = [scale_factor ** level for level in range(fpn_start_level, num_levels)]
        if len(regression_range) != len(self.fpn_strides):
            raise ConfigError(
                f"model.regression_range: {len(regression_range)} ranges for {len(self.fpn_strides)} pyramid "
                f"levels (backbone_arch {list(backbone_arch)}, fpn_start_level {fpn_start_level})"
            )
        if isinstance(n_mha_win_size, int):
            window_sizes = [n_mha_win_size] * num_levels
        else:
            window_sizes = list(n_mha_win_size)
            if len(window_sizes) != num_levels:
                raise ConfigError(f"model.n_mha_win_size: need one window per level ({num_levels}), got {window_sizes}")
        # strided convolutions need every level's length to be an integer
        self.pad_multiple = largest_stride(backbone_arch, scale_factor)
        if max_seq_len % self.pad_multiple != 0:
            raise ConfigError(
                f"dataset.max_seq_len: {max_seq_len} must be a multiple of the largest stride {self.pad_multiple}"
            )

        self.input_vid_dim = input_vid_dim
        self.input_txt_dim = input_txt_dim
        self.num_classes = num_classes
        self.max_seq_len = max_seq_len
        self.video_pad_mode = video_pad_mode
        self.text_pad_mode = text_pad_mode
        self.trim_pyramid = trim_pyramid
        self.sparse_reg_head = sparse_reg_head
        self.regression_range = [list(r) for r in regression_range]

        self.backbone = make_backbone(
            backbone_type,
            n_vid_in=input_vid_dim,
            n_txt_in=input_txt_dim,
            n_embd=embd_dim,
            n_head=n_head,
            n_embd_ks=embd_kernel_size,
            max_len=max_seq_len,
            arch=tuple(backbone_arch),
            mha_win_size=window_sizes,
            scale_factor=scale_factor,
            with_ln=embd_with_ln,
            attn_pdrop=0.0,
            proj_pdrop=self.train_cfg["dropout"],
            path_pdrop=self.train_cfg["droppath"],
            use_abs_pe=use_abs_pe,
            use_rel_pe=use_rel_pe,
            use_sdpa=use_sdpa,
        )
        self.neck = make_neck(
            fpn_type,
            in_channels=[embd_dim] * num_levels,
            out_channel=fpn_dim,
            scale_factor=scale_factor,
            start_level=fpn_start_level,
            with_ln=fpn_with_ln,
        )
        self.point_generator = make_generator(
            "point",
            max_seq_len=max_seq_len * max_buffer_len_factor,
            fpn_strides=self.fpn_strides,
            regression_range=self.regression_range,
        )
        self.cls_head = ClsHead(
            fpn_dim, head_dim, num_classes,
            prior_prob=self.train_cfg["cls_prior_prob"],
            num_layers=head_num_layers,
            kernel_size=head_kernel_size,
            with_ln=head_with_ln,
            empty_cls=self.train_cfg["head_empty_cls"],
        )
        self.reg_head = RegHead(
            fpn_dim, head_dim, len(self.fpn_strides),
            num_layers=head_num_layers, kernel_size=head_kernel_size, with_ln=head_with_ln,
        )
        self.set_local_attention(local_attn_impl)
        self.set_fast_kernels(layer_norm=fused_layer_norm, mlp=chunked_mlp, cross_attention=text_side_cross_attn)
        # label assignment, losses and the running loss normaliser (state saved by the trainer,
        # not in state_dict, so reference checkpoints load strictly)
        self.criterion = losses.Criterion(self.train_cfg, num_classes)

    # ------------------------------------------------------------------ batches
    def collator(self, is_training: bool) -> BatchCollator:
        """The collate function that pads as this model expects (what the loaders use)."""
        return BatchCollator(self.max_seq_len, self.pad_multiple, self.video_pad_mode, self.text_pad_mode,
                             is_training)

    def check_batch(self, batch: Batch) -> None:
        """A ``DataError`` unless ``batch`` fits the network (feature widths, padded length)."""
        if batch.videos.shape[1] != self.input_vid_dim or batch.texts.shape[1] != self.input_txt_dim:
            raise DataError(
                f"batch of {batch.query_ids[:3]}...: video/text features have {batch.videos.shape[1]}/"
                f"{batch.texts.shape[1]} channels, the model expects input_vid_dim {self.input_vid_dim} / "
                f"input_txt_dim {self.input_txt_dim}"
            )
        if batch.videos.shape[-1] % self.pad_multiple != 0:
            raise DataError(
                f"padded video length {batch.videos.shape[-1]} is not a multiple of {self.pad_multiple} "
                "(collate with the model's collator)"
            )

    # ------------------------------------------------------------------ network
    def set_local_attention(self, impl: str) -> None:
        """Pick the local-attention kernel of every layer (same numbers, other speed and memory)."""
        self.local_attn_impl = impl
        for module in self.modules():
            if isinstance(module, LocalMaskedMHCA):
                module.impl = impl

    def set_fast_kernels(self, layer_norm: bool, mlp: bool, cross_attention: bool) -> None:
        """Every channel LayerNorm: the one-pass kernel or the reference's formula; every
        transformer MLP: cache-sized column chunks or two full-width convolutions; every
        cross-attention: projections on the text side or on the video (same numbers to rounding)."""
        for module in self.modules():
            if isinstance(module, LayerNorm):
                module.fused = layer_norm
            elif isinstance(module, TransformerBlock):
                module.use_chunked_mlp = mlp
            elif isinstance(module, MaskedMHA):
                module.text_side_projections = cross_attention

    def pyramid_lengths(self, batch: Batch) -> Optional[List[int]]:
        """Per-level lengths for ``network``: trimmed (``trim_pyramid`` with "exact" video padding)
        or None (``T / s_l``, as the reference). From the collator's ``video_lengths``; a batch
        without them costs one host synchronisation (the last valid position)."""
        if not (self.trim_pyramid and self.video_pad_mode == "exact"):
            return None
        padded_length = batch.videos.shape[-1]
        if batch.video_lengths is not None:
            num_valid = max(batch.video_lengths)  # masks are valid prefixes
        else:
            positions = torch.arange(1, padded_length + 1, device=batch.video_masks.device)
            num_valid = int((batch.video_masks[:, 0] * positions).max())  # last valid position + 1
        return pyramid_lengths(num_valid, padded_length, self.backbone.num_levels, self.backbone.scale_factor)

    def network(
        self,
        videos: Tensor,
        video_masks: Tensor,
        video_index: Tensor,
        texts: Tensor,
        text_masks: Tensor,
        level_lengths: Optional[List[int]] = None,
        with_offsets: bool = True,
    ) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[Tensor], Optional[List[Tensor]]]:
        """Backbone, neck and heads on plain tensors (what ``torch.compile`` traces).

        ``level_lengths`` (see ``pyramid_lengths``) trims the video and every level; None runs
        the padded length. Returns per level: points ``(T_l, 4)``, neck features ``(Q, C, T_l)``,
        masks ``(Q, 1, T_l)``, logits ``(Q, C, T_l)``, offsets ``(Q, 2, T_l)`` (None without
        ``with_offsets``), channel-first as the heads emit them.
        """
        padded_length = videos.shape[-1]
        if level_lengths is not None:
            videos, video_masks = videos[..., : level_lengths[0]], video_masks[..., : level_lengths[0]]
        video, video_mask = self.backbone.embed_video(videos, video_masks, padded_length)  # (V, C, T_0)
        text, text_mask = self.backbone.encode_text(texts, text_masks)  # (Q, C, L)
        feats, masks = self.backbone.fuse(video, video_mask, text, text_mask, video_index, level_lengths)
        fpn_feats, fpn_masks = self.neck(feats, masks)
        points = self.point_generator(fpn_feats)
        cls_logits = self.cls_head(fpn_feats, fpn_masks)
        offsets = self.reg_head(fpn_feats, fpn_masks) if with_offsets else None
        return points, fpn_feats, fpn_masks, cls_logits, offsets

    def _network_fn(self) -> Callable[..., Any]:
        """``network``, compiled on first use when ``compile`` is set (the compiled function is
        cached per model object and never pickled or deep-copied, e.g. into an EMA copy)."""
        if self.compile_backend is None:
            return self.network
        cached = self.__dict__.get("_compiled_network")
        if cached is None or cached[0] is not self:
            cached = (self, torch.compile(self.network, backend=self.compile_backend))
            self.__dict__["_compiled_network"] = cached
        return cached[1]

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled_network", None)
        return state

    def forward_heads(self, batch: Batch) -> HeadOutputs:
        """Backbone, neck and heads; outputs permuted to ``(Q, T_l, C)`` as the reference does."""
        return self._forward_heads(batch, with_offsets=True)[0]

    def _forward_heads(self, batch: Batch, with_offsets: bool) -> Tuple[HeadOutputs, List[Tensor], List[Tensor]]:
        """``forward_heads`` plus the neck features and masks ``(Q, 1, T_l)`` the heads read;
        without ``with_offsets`` the outputs' ``offsets`` is an empty list."""
        points, fpn_feats, fpn_masks, cls_logits, offsets = self._network_fn()(
            batch.videos, batch.video_masks, batch.video_index, batch.texts, batch.text_masks,
            self.pyramid_lengths(batch), with_offsets,
        )
        outputs = HeadOutputs(
            points=points,
            fpn_masks=[m.squeeze(1) for m in fpn_masks],
            cls_logits=[x.permute(0, 2, 1) for x in cls_logits],
            offsets=[x.permute(0, 2, 1) for x in offsets] if offsets is not None else [],
        )
        return outputs, fpn_feats, fpn_masks

    def forward(self, inputs: Union[Batch, Sequence[Dict[str, Any]]]) -> Any:
        """Train mode: ``{"cls_loss", "reg_loss", "final_loss"}``; eval mode: ``HeadOutputs``.

        A list of dataset items instead of a ``Batch`` is the reference's call: collated here (on
        the model's device) and, in eval mode, post-processed to per-query result dicts
        ``{video_id, query_id, segments (K, 2) s, scores (K,), labels (K,)}``.
        """
        if not isinstance(inputs, Batch):
            return self._reference_call(inputs)
        self.check_batch(inputs)
        if self.training:
            return self.forward_train(inputs)
        return self.forward_heads(inputs)

    def _reference_call(self, items: Sequence[Dict[str, Any]]) -> Any:
        from ..evaluation.postprocess import results_of_heads  # the evaluation layer, kept out of the network

        param = next(self.parameters())
        batch = self.collator(self.training)(items).to(param.device, param.dtype)
        outputs = self(batch)
        if self.training:
            return outputs
        with torch.no_grad():
            return results_of_heads(outputs, batch.meta, self.test_cfg)

    def forward_train(self, batch: Batch) -> Dict[str, Tensor]:
        """Train mode's losses; with ``sparse_reg_head`` the regression head runs only around the
        positive points (``RegHead.forward_at``), the only ones the loss reads."""
        if batch.segments is None or batch.labels is None:
            raise DataError(f"training needs ground-truth windows; batch of queries {batch.query_ids} has none")
        outputs, fpn_feats, fpn_masks = self._forward_heads(batch, with_offsets=not self.sparse_reg_head)
        gt_cls, gt_offsets = self.criterion.assign(outputs.points, batch.segments, batch.labels, batch.query_ids)
        offsets = outputs.offsets
        if self.sparse_reg_head:
            lengths = [m.shape[1] for m in outputs.fpn_masks]
            positive = losses.positive_points(torch.stack(gt_cls), torch.cat(outputs.fpn_masks, dim=1))  # (Q, P)
            spans = None
            if batch.gt_extent is not None:  # positives lie strictly inside a query's windows
                spans = [min(length - 1, int(batch.gt_extent // self.backbone.scale_factor ** level) + 1)
                         for level, length in enumerate(lengths)]
            offsets = self.reg_head.forward_at(fpn_feats, fpn_masks, list(positive.split(lengths, dim=1)), spans)
            offsets = [x.permute(0, 2, 1) for x in offsets]  # (Q, T_l, 2)
        return self.criterion(outputs.fpn_masks, outputs.cls_logits, offsets, gt_cls, gt_offsets)

    def set_drop_path(self, prob: float) -> None:
        """Set every drop-path probability (0 makes train mode deterministic; LayerScale stays)."""
        for module in self.modules():
            if hasattr(module, "drop_prob"):
                module.drop_prob = prob


def _unknown_keys_message(unknown: Dict[str, Any]) -> str:
    known = [p for p in inspect.signature(LocPointTransformer.__init__).parameters if p not in ("self", "unknown")]
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"model: unknown key(s) {', '.join(parts)}"


def _validate(
    backbone_arch: Sequence[int],
    n_head: int,
    embd_dim: int,
    num_classes: int,
    video_pad_mode: str,
    text_pad_mode: str,
    train_cfg: Dict[str, Any],
) -> None:
    if len(backbone_arch) != 5 or any(int(n) < 0 for n in backbone_arch):
        raise ConfigError(
            "model.backbone_arch: expected 5 non-negative counts [embd_convs, text_stem, video_stem, "
            f"branch_cross, branch_plain], got {list(backbone_arch)}"
        )
    if embd_dim % n_head != 0:
        raise ConfigError(f"model.embd_dim {embd_dim} must be divisible by model.n_head {n_head}")
    if num_classes <= 0:
        raise ConfigError(f"model.num_classes: expected a positive count, got {num_classes}")
    if video_pad_mode not in VIDEO_PAD_MODES:
        raise ConfigError(f"model.video_pad_mode: expected one of {VIDEO_PAD_MODES}, got {video_pad_mode!r}")
    if text_pad_mode not in TEXT_PAD_MODES:
        raise ConfigError(f"model.text_pad_mode: expected one of {TEXT_PAD_MODES}, got {text_pad_mode!r}")
    if train_cfg["center_sample"] not in targets.CENTER_SAMPLE_MODES:
        raise ConfigError(
            f"train_cfg.center_sample: expected one of {targets.CENTER_SAMPLE_MODES}, got {train_cfg['center_sample']!r}"
        )
