"""Configuration: one commented defaults dict; a YAML file and ``--opt`` overrides only change it.

``load_config`` merges a YAML file over a deep copy of :data:`DEFAULTS` (the defaults are never
shared or mutated, unlike the reference), applies ``"a.b.c=value"`` overrides, rejects unknown
keys and wrong types with the key path, and then derives the model's copies of the dataset
dimensions and of ``train_cfg`` / ``test_cfg`` exactly as the reference does, so that
``make_meta_arch(cfg["model_name"], **cfg["model"])`` and
``make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])`` work.

Keys and defaults of the reference (spec section 2) keep their names and values; the keys this
project adds are marked "(ours)". Numeric defaults that the reference wrote as ints but that the
shipped configs set to fractions (``feat_stride``, ``clip_grad_l2norm``, ...) are written as
floats here so the type check accepts both.
"""
from __future__ import annotations

import copy
import difflib
import os
import pprint
import re
from typing import Any, Sequence

import yaml

from libs.core.errors import ConfigError
from libs.utils.io import atomic_open

DEFAULTS: dict[str, Any] = {
    # random seed for reproducibility (torch, numpy, random)
    "init_rand_seed": 12345678,
    # registered dataset name (the reference's default "epic" is not registered here either)
    "dataset_name": "epic",
    # devices; the reference never read it (its configs write "cuda" or "cuda:0")
    "devices": ["cuda:0"],
    # split names handed to the dataset builder
    "train_split": ("training",),
    "val_split": ("validation",),
    # registered meta-architecture
    "model_name": "LocPointTransformer",
    # (ours, the reference had no default) root folder for experiment outputs
    "output_folder": "./ckpt/",
    # dataset keyword arguments (make_dataset(name, is_training, split, **dataset))
    "dataset": {
        # official NLQ json with the ground truth used for evaluation (paths: relative to the cwd)
        "json_file": None,
        # jsonl annotations for training / evaluation (libs.datasets.annotations)
        "train_jsonl_file": None,
        "val_jsonl_file": None,
        # video feature store (clip_uid -> (T, C_v)); text stores for train / eval (query_id -> (L, C_t))
        "video_feat_dir": None,
        "text_feat_dir": None,
        "val_text_feat_dir": None,
        # temporal stride of the features, in frames (16.043 for the InternVideo features)
        "feat_stride": 16.0,
        # number of frames each feature covers (decoding adds half of it, the reference's quirk)
        "num_frames": 32.0,
        # frames per second of the videos; None = read from the annotations
        "default_fps": None,
        # video feature channels
        "input_vid_dim": 2304,
        # text token feature channels
        "input_txt_dim": 512,
        # number of classes (1: a query has one kind of window)
        "num_classes": 1,
        # downsampling rate of the features, 1 = original resolution (only rescales targets)
        "downsample_rate": 1,
        # padded video length, in features
        "max_seq_len": 2560,
        # random widening of ground-truth windows (pretraining on narrations)
        "enable_temporal_jittering": False,
        # (ours) per-process in-memory feature cache budget in MB; 0 = no cache
        "feature_cache_mb": 0,
        # (ours) what training does with clips longer than max_seq_len: "crop" | "error"
        "long_clip_policy": "crop",
        # (ours) test-split jsonl (no timestamps); `eval.py --split test` evaluates it. None: the
        # config's val_jsonl_file is taken as the test split (the reference's inference config)
        "test_jsonl_file": None,
        # (ours) text encoder that made the text features ("minilm" | "clip" | None = unknown);
        # the predictor uses it to encode new questions the same way
        "text_encoder": None,
        # (ours) video backbone that made the video features (a libs.video registry name, e.g.
        # "clip", "thumbnail"; None = unknown); tools/ground.py --video extracts features with it
        "video_backbone": None,
        # (ours) accepted for the reference's scratch/star configs and ignored (ActionFormer cropping)
        "trunc_thresh": None,
        "crop_ratio": None,
    },
    # data loading
    "loader": {
        # queries per batch (per GPU)
        "batch_size": 2,
        # data loading worker processes
        "num_workers": 4,
        # (ours) batch a clip's queries together so its video is read and embedded once
        "video_centric": True,
        # (ours) batch size for evaluation (the reference's eval_nlq.py used 16)
        "eval_batch_size": 16,
    },
    # network architecture (make_meta_arch(model_name, **model))
    "model": {
        # registered backbone (convTransformer: the only one, as in the reference's configs)
        "backbone_type": "convTransformer",
        # registered neck (identity: per-level LayerNorm, the reference's GroundNLQ neck)
        "fpn_type": "identity",
        # [n_embd_convs, n_text_stem, n_video_stem, n_branch_cross, n_branch_plain]
        "backbone_arch": (2, 2, 2, 0, 6),
        # scale factor between pyramid levels
        "scale_factor": 2,
        # regression range (feature units) of each pyramid level
        "regression_range": [(0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000)],
        # number of attention heads
        "n_head": 4,
        # window size of local self-attention; <= 1 = global attention
        "n_mha_win_size": -1,
        # kernel size of the embedding convolutions
        "embd_kernel_size": 3,
        # output channels of the embedding network
        "embd_dim": 512,
        # LayerNorm after the embedding convolutions
        "embd_with_ln": True,
        # channels of the neck (FPN)
        "fpn_dim": 512,
        # LayerNorm at the end of the neck
        "fpn_with_ln": True,
        # first pyramid level fed to the neck
        "fpn_start_level": 0,
        # channels of the heads
        "head_dim": 512,
        # kernel size of the classification / regression heads
        "head_kernel_size": 3,
        # layers per head, including the output layer
        "head_num_layers": 3,
        # LayerNorm in the heads
        "head_with_ln": True,
        # max length of the buffered points, as a factor of max_seq_len
        "max_buffer_len_factor": 4.0,
        # absolute sinusoid position encoding added to the video embedding
        "use_abs_pe": False,
        # relative position encoding in self-attention (disabled in every config)
        "use_rel_pe": False,
        # (ours) video padding: "exact" (shortest valid length) | "reference" (always max_seq_len)
        "video_pad_mode": "exact",
        # (ours) text padding: "at_least_one" | "reference" (pad to the batch's longest query)
        "text_pad_mode": "at_least_one",
        # (ours) use torch's scaled_dot_product_attention kernels
        "use_sdpa": True,
        # (ours) local attention kernel: "blocked" (block GEMMs, fastest) | "banded" (shifted
        # products) | "chunked" (the reference's overlapping chunks); same numbers to rounding
        "local_attn_impl": "blocked",
        # (ours) channel LayerNorm in one pass (compiled kernel; the reference's formula where it
        # is not built or does not apply); same numbers to rounding
        "fused_layer_norm": True,
        # (ours) transformer MLPs as matrix products over cache-sized column chunks instead of two
        # full-width 1x1 convolutions; same numbers to summation order
        "chunked_mlp": True,
        # (ours) cross-attention with its query and output projections applied to the text
        # (L tokens) instead of the video (T positions) when that is cheaper; same numbers to rounding
        "text_side_cross_attn": True,
        # (ours) with video_pad_mode exact: run each pyramid level at its valid length plus one
        # padded column instead of T / stride (same valid outputs, fewer FLOPs)
        "trim_pyramid": True,
        # (ours) training: run the regression head only around the positive points, the only
        # outputs its loss reads (same losses and gradients, ~10% fewer FLOPs per step)
        "sparse_reg_head": True,
        # (ours) torch.compile the network: false | true (inductor) | a torch.compile backend name
        "compile": False,
    },
    # label assignment and losses (copied into model)
    "train_cfg": {
        # center sampling: "radius" | "none"
        "center_sample": "radius",
        # center sampling radius, in level strides
        "center_sample_radius": 1.5,
        # weight of the regression loss; <= 0 = automatic balancing
        "loss_weight": 1.0,
        # prior probability of the classifier's bias initialisation
        "cls_prior_prob": 0.01,
        # initial value of the moving loss normaliser
        "init_loss_norm": 2000.0,
        # gradient clipping (L2 norm); <= 0 = off
        "clip_grad_l2norm": -1.0,
        # classes whose classification head is initialised empty (ActionFormer leftover)
        "head_empty_cls": [],
        # dropout in the transformer blocks
        "dropout": 0.0,
        # drop path rate in the transformer blocks
        "droppath": 0.1,
        # label smoothing of the classification targets (> 0 to enable)
        "label_smoothing": 0.0,
    },
    # decoding and NMS (copied into model)
    "test_cfg": {
        # score threshold before NMS
        "pre_nms_thresh": 0.001,
        # candidates kept per pyramid level before NMS
        "pre_nms_topk": 5000,
        # IoU threshold of NMS
        "iou_threshold": 0.1,
        # minimum score after (soft) NMS
        "min_score": 0.01,
        # results kept per query
        "max_seg_num": 1000,
        # NMS method: "soft" | "hard" | "none"
        "nms_method": "soft",
        # sigma of gaussian soft NMS
        "nms_sigma": 0.5,
        # minimum decoded window length (feature units)
        "duration_thresh": 0.05,
        # per-class NMS (True) or class-agnostic NMS with voting (False)
        "multiclass_nms": True,
        # external classification scores (unused by the reference)
        "ext_score_file": None,
        # IoU threshold of score voting (class-agnostic NMS only)
        "voting_thresh": 0.75,
        # (ours) NMS implementation: "auto" | "cpp" | "cuda" | "torch"
        "nms_backend": "auto",
        # (ours) stop soft NMS once max_seg_num results are found (same results, less work)
        "nms_early_stop": True,
        # (ours) decode adds 0.5 * num_frames like the reference (False: symmetric with training)
        "half_window_offset": True,
    },
    # optimizer and lr schedule
    "opt": {
        # solver: "AdamW" | "SGD"
        "type": "AdamW",
        # SGD momentum
        "momentum": 0.9,
        # weight decay of the decay group
        "weight_decay": 0.0,
        # base learning rate (per GPU when trainer.scale_lr_by_world_size is set)
        "learning_rate": 1e-3,
        # lr factor of the backbone relative to the heads (finetuning)
        "backbone_lr_weight": 1.0,
        # epochs after the warm-up
        "epochs": 30,
        # linear warm-up before the schedule
        "warmup": True,
        "warmup_epochs": 5,
        # lr schedule after the warm-up: "cosine" | "multistep" | "constant"
        "schedule_type": "cosine",
        # multistep milestones, in epochs after the warm-up
        "schedule_steps": [],
        # multistep decay factor
        "schedule_gamma": 0.1,
        # (ours) AdamW's fused kernel (CPU and CUDA): about 3x faster optimizer steps on CPU, results
        # within float rounding (~1e-8) of the default per-parameter loop the reference used
        "fused": False,
    },
    # (ours) the training loop and its hooks
    "trainer": {
        # decay of the model's exponential moving average
        "ema_decay": 0.999,
        # mixed precision on CUDA: "none" (float32, as the reference trained) | "bf16" | "fp16".
        # bf16 is opt-in: its effect on the Ego4D configs' accuracy is not measured yet. The CPU
        # always runs float32
        "amp": "none",
        # deterministic cuDNN/cuBLAS kernels (bit-reproducible GPU runs); false lets cuDNN pick
        # the fastest kernels (benchmark mode) at the price of run-to-run differences
        "deterministic": True,
        # micro-batches accumulated per optimizer step
        "grad_accum_steps": 1,
        # multiply the lr by the number of processes (what the reference's lr values assume)
        "scale_lr_by_world_size": False,
        # log every this many iterations
        "print_freq": 100,
        # snapshot for --resume every this many iterations
        "snapshot_freq": 500,
        # evaluate every this many epochs; 0 = never
        "eval_freq": 1,
        # keep an epoch checkpoint every this many epochs
        "checkpoint_freq": 1,
        # epoch checkpoints kept (older ones are deleted; the best one is kept apart)
        "keep_last": 3,
        # evaluate the EMA weights instead of the raw ones
        "eval_use_ema": False,
        # consecutive non-finite losses tolerated (step skipped) before training stops
        "max_nonfinite_steps": 5,
        # stop after this many epochs (None: warmup_epochs + epochs)
        "early_stop_epochs": None,
        # torch's CPU threads in training (None: its default, one per core). A model as small as
        # the demo's trains faster on one thread: its many small ops pay more in thread hand-off
        # than they gain (demo step on 2 cores: 0.11 s on 1 thread, 0.16 s on 2)
        "cpu_threads": None,
    },
}

# keys of ``model`` that load_config fills from other sections; a saved config holds them, so
# they are accepted in a file (and overwritten)
DERIVED_MODEL_KEYS = ("input_vid_dim", "input_txt_dim", "num_classes", "max_seq_len", "train_cfg", "test_cfg")

# dataset keys that name files or folders (``check_paths=True`` checks them all; runs check ``paths_read``)
PATH_KEYS = ("json_file", "train_jsonl_file", "val_jsonl_file", "video_feat_dir", "text_feat_dir",
             "val_text_feat_dir", "test_jsonl_file")

# keys whose accepted types are wider than their default's
_EXTRA_TYPES: dict[tuple[str, ...], tuple[type, ...]] = {
    ("devices",): (str,),  # the reference's configs write "cuda" / "cuda:0"
    ("model", "compile"): (str,),  # a torch.compile backend name, e.g. "inductor"
}



def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_PATH = (lambda value: isinstance(value, str), "a path (str)")
# keys that default to None (unset): what they take when set (a check and its description)
_OPTIONAL_VALUES: dict[tuple[str, ...], tuple[Any, str]] = {
    **{("dataset", key): _PATH for key in (
        "json_file", "train_jsonl_file", "val_jsonl_file", "test_jsonl_file", "video_feat_dir",
        "text_feat_dir", "val_text_feat_dir")},
    ("dataset", "default_fps"): (_is_number, "a number"),
    ("dataset", "text_encoder"): (lambda value: isinstance(value, str), "a str"),
    ("dataset", "video_backbone"): (lambda value: isinstance(value, str), "a str"),
    ("dataset", "trunc_thresh"): (_is_number, "a number"),
    ("dataset", "crop_ratio"): (lambda value: isinstance(value, list), "a list"),
    ("test_cfg", "ext_score_file"): _PATH,
    ("trainer", "early_stop_epochs"): (_is_positive_int, "a positive integer"),
    ("trainer", "cpu_threads"): (_is_positive_int, "a positive integer"),
}

# YAML 1.1 (PyYAML) reads "1e-4" as a string; accept such numbers where a float is expected
_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

MODES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                         "modes")
BASE_KEY = "_base_"  # in a config file: the configs it builds on
CONFIG_YAML = "config.yaml"
CONFIG_TXT = "config.txt"


def load_default_config() -> dict:
    """A fresh deep copy of :data:`DEFAULTS` with the derived model keys filled in."""
    return _derive(copy.deepcopy(DEFAULTS))


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b.c=value", ...]`` -> nested dict; values are parsed as YAML (never evaluated).

    ``model.n_head=8`` -> int, ``opt.learning_rate=2.5e-5`` -> float (after validation),
    ``dataset.enable_temporal_jittering=true`` -> bool, ``model.backbone_arch=[2,4,4,0,6]`` ->
    list, anything else a string.
    """
    result: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. opt.learning_rate=1e-4")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
        node = result
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} was already set to a value")
            node = child
        node[parts[-1]] = value
    return result


def mode_path(mode: str) -> str:
    """The file of a named mode (``configs/modes/<mode>.yaml``), or a ConfigError listing the modes."""
    path = os.path.join(MODES_DIR, f"{mode}.yaml")
    if not os.path.isfile(path):
        known = sorted(name[:-5] for name in os.listdir(MODES_DIR) if name.endswith(".yaml"))
        raise ConfigError(f"unknown mode {mode!r}; known modes: {known} (files in {MODES_DIR})")
    return path


def load_config(path: str, overrides: list[str] | None = None, check_paths: bool = False,
                mode: str | None = None) -> dict:
    """Load a YAML config (and its ``_base_`` files), apply a mode and overrides, validate, derive
    the model's keys.

    ``_base_: [path, ...]`` in a file names the configs it builds on (paths relative to the file;
    bases may have bases): their mappings are merged first, in the order listed, then the file's
    own keys on top (mappings merge deeply, lists and scalars replace). ``mode`` (e.g.
    ``"reference"``) merges ``configs/modes/<mode>.yaml`` over the config, before the overrides.
    Every file is validated on its own, so an error names the file the bad key is in. Relative
    dataset paths are relative to the current working directory (the repository root, as in the
    reference); ``check_paths=True`` requires every set dataset path to exist.
    """
    return resolve_config(path, overrides, check_paths, mode)[0]


def resolve_config(path: str, overrides: list[str] | None = None, check_paths: bool = False,
                   mode: str | None = None) -> tuple[dict, dict]:
    """``load_config``'s config and, for every key a file, the mode or an override set, where its
    value came from: ``{("section", "key"): "config file <path>" | "override"}``."""
    cfg = copy.deepcopy(DEFAULTS)
    sources: dict = {}
    layers = [(f"config file {file}", user) for file, user in config_files(path)]
    if mode:
        mode_file = mode_path(mode)
        layers.append((f"config file {mode_file}", _read_yaml(mode_file)))
    if overrides:
        layers.append(("override", parse_overrides(overrides)))
    for source, user in layers:
        validated = _validated(user, DEFAULTS, (), source)
        _merge(cfg, validated)
        _note_sources(validated, DEFAULTS, (), source, sources)
        _check_derived(user, cfg, source)
    if check_paths:
        check_paths_exist(cfg, sources, PATH_KEYS)
    return _derive(cfg), sources


def config_files(path: str, _including: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """The files a config is made of, each with its own keys (without ``_base_``): its bases
    (depth first, in the order listed), then itself. A file that includes itself, directly or
    through its bases, is an error naming the chain."""
    here = os.path.abspath(path)
    if here in _including:
        chain = list(_including[_including.index(here):]) + [here]
        raise ConfigError("config files include each other: " + " -> ".join(chain))
    user = _read_yaml(path)
    bases = user.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f"config file {path}: {BASE_KEY!r} must be a path or a list of paths "
                          f"(relative to the file), got {bases!r}")
    files: list[tuple[str, dict]] = []
    for base in bases:
        files += config_files(os.path.join(os.path.dirname(path), base), _including + (here,))
    return files + [(path, user)]


def describe_config(cfg: dict, sources: dict) -> str:
    """The resolved config as YAML, then every value that differs from the defaults with the file
    or override it came from (``train.py CONFIG --print-config``)."""
    lines = [yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None).rstrip(),
             "", "# values that differ from the defaults, and where they came from:"]
    for key_path, source in sorted(sources.items()):
        value, default = cfg, DEFAULTS
        for part in key_path:
            value, default = value[part], default[part]
        if _plain(value) != _plain(default):
            lines.append(f"#   {'.'.join(key_path)} = {_plain(value)!r}  ({source})")
    return "\n".join(lines)


def _note_sources(user: dict, defaults: dict, prefix: tuple[str, ...], source: str, sources: dict) -> None:
    for key, value in user.items():
        if isinstance(defaults.get(key), dict) and isinstance(value, dict):
            _note_sources(value, defaults[key], prefix + (key,), source, sources)
        else:
            sources[prefix + (key,)] = source


def _read_yaml(path: str) -> dict:
    """A config file's mapping of sections (empty file: empty mapping); ConfigError naming the file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            user = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if user is None:
        return {}
    if not isinstance(user, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(user).__name__}")
    return user


def save_config(cfg: dict, folder: str) -> None:
    """Write the resolved config as ``config.yaml`` (loadable again) and ``config.txt`` (pprint)."""
    with atomic_open(os.path.join(folder, CONFIG_YAML), "w") as f:
        yaml.safe_dump(_plain(cfg), f, sort_keys=False, default_flow_style=None)
    with atomic_open(os.path.join(folder, CONFIG_TXT), "w") as f:
        pprint.pprint(cfg, stream=f)


def _validated(user: dict, defaults: dict, prefix: tuple[str, ...], source: str) -> dict:
    """Check ``user`` against ``defaults`` (known keys, types); returns it with numbers coerced."""
    out = {}
    for key, value in user.items():
        key_path = prefix + (key,)
        name = ".".join(map(str, key_path))
        if key not in defaults:
            if prefix == ("model",) and key in DERIVED_MODEL_KEYS:
                continue  # filled from dataset / train_cfg / test_cfg by _derive
            hint = _suggestion(str(key), defaults, prefix)
            where = f"section {'.'.join(prefix)!r}" if prefix else "the top level"
            raise ConfigError(f"{source}: unknown key {name!r} in {where}{hint}")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name!r} must be a section (mapping), got {value!r}")
            out[key] = _validated(value, default, key_path, source)
        else:
            out[key] = _checked_value(value, default, key_path, name, source)
    return out


def _suggestion(key: str, defaults: dict, prefix: tuple[str, ...]) -> str:
    """"; did you mean ..." from a close key in the same section, else the same key elsewhere."""
    close = difflib.get_close_matches(key, [str(k) for k in defaults], n=1)
    if close:
        return f"; did you mean {'.'.join(prefix + (close[0],))!r}?"
    for section, content in DEFAULTS.items():
        if isinstance(content, dict) and key in content and (section,) != prefix:
            return f"; did you mean {section + '.' + key!r}?"
    if prefix and key in DEFAULTS:
        return f"; did you mean {key!r} (top level)?"
    return ""


def _check_derived(user: dict, cfg: dict, source: str) -> None:
    """A file may repeat a derived model key (saved configs do), but only with the derived value."""
    model = user.get("model") or {}
    derived = _derived_model_keys(cfg)
    for key in DERIVED_MODEL_KEYS:
        if key in model and _plain(model[key]) != _plain(derived[key]):
            origin = key if key in ("train_cfg", "test_cfg") else f"dataset.{key}"
            raise ConfigError(f"{source}: 'model.{key}' is derived from {origin!r}; "
                              f"set that instead (got {model[key]!r}, derived {derived[key]!r})")


def _checked_value(value: Any, default: Any, key_path: tuple[str, ...], name: str, source: str) -> Any:
    """The value if its type fits the default's (int for float; list for tuple); else ConfigError."""
    if default is None:
        check, expected = _OPTIONAL_VALUES[key_path]
        if value is not None and not check(value):
            raise ConfigError(f"{source}: '{name}' must be {expected} or null, got {value!r}")
        return value
    if isinstance(value, (str,)) and isinstance(default, float) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    extra = _EXTRA_TYPES.get(key_path, ())
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        expected = "a bool (true/false)"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        expected = "a list"
    else:
        ok = isinstance(value, type(default))
        expected = f"a {type(default).__name__}"
    if not ok and not isinstance(value, extra):
        if extra:
            expected += " or " + " or ".join(f"a {t.__name__}" for t in extra)
        raise ConfigError(f"{source}: {name!r} must be {expected} (default {default!r}), "
                          f"got {value!r} ({type(value).__name__})")
    return value


def _merge(dst: dict, src: dict) -> None:
    """Merge ``src`` into ``dst`` in place: nested dicts merge, everything else replaces."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = copy.deepcopy(value)


def paths_read(cfg: dict, training: bool, with_ground_truth: bool = True) -> list[str]:
    """The dataset path keys a run reads: training reads its records, video store and text
    features, and the evaluation split's as well when it validates (``trainer.eval_freq`` > 0 and
    ``val_jsonl_file`` set); evaluation reads the split in ``val_jsonl_file``, its text features
    (``val_text_feat_dir``, else ``text_feat_dir``) and, for recall, the official json ``json_file``."""
    data = cfg["dataset"]
    evaluation = ["val_jsonl_file", "video_feat_dir", "val_text_feat_dir" if data.get("val_text_feat_dir") else "text_feat_dir"]
    if with_ground_truth:
        evaluation.append("json_file")
    if not training:
        return evaluation
    keys = ["train_jsonl_file", "video_feat_dir", "text_feat_dir"]
    if cfg["trainer"]["eval_freq"] > 0 and data.get("val_jsonl_file"):
        keys += [key for key in evaluation if key not in keys]
    return keys


def check_paths_exist(cfg: dict, sources: dict, keys: Sequence[str]) -> None:
    """A ConfigError naming the file (or override) that set the first of ``keys`` whose path does
    not exist; unset keys are not checked. ``sources`` as ``resolve_config`` returns them."""
    for key in keys:
        value = cfg["dataset"].get(key)
        if value is not None and not os.path.exists(value):
            source = sources.get(("dataset", key), "the defaults")
            raise ConfigError(f"{source}: dataset.{key} = {value!r} does not exist "
                              f"(relative paths are relative to {os.getcwd()})")


def _derived_model_keys(cfg: dict) -> dict:
    """The model keys the reference copies from the dataset dimensions and the train/test settings."""
    derived = {key: cfg["dataset"][key] for key in ("input_vid_dim", "input_txt_dim", "num_classes", "max_seq_len")}
    return {**derived, "train_cfg": cfg["train_cfg"], "test_cfg": cfg["test_cfg"]}


def _derive(cfg: dict) -> dict:
    """Fill ``model`` with its derived keys (copies: changing one section never changes another)."""
    cfg["model"].update(copy.deepcopy(_derived_model_keys(cfg)))
    return cfg


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively, so ``yaml.safe_dump`` can write the config."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
