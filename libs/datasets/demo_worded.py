"""The worded demo: the built-in demo data with real words, encoded by a real text encoder.

The plain demo (``demo.py``) gives every word a random embedding, so a model trained on it cannot
read a question it has not seen. Here the questions are natural language built from Ego4D's NLQ
templates (``Where did I put the scissors?``, ``How many times did I wash the pan?``, ...) and
their token features come from a pretrained text encoder (MiniLM by default, the one the
predictor uses), so a model trained on this data grounds *new phrasings* of a question.

The signal: every object has a *signature* in video feature space, a fixed random projection of
the text encoder's embedding of the object's names (centred over the vocabulary, so objects differ
from each other rather than all sharing the encoder's common direction). Inside a query's window
the video carries its object's signature; other windows carry the other queries' objects and a
few distractor objects, so only reading the question tells which window answers it. Objects are
named by synonyms too ("scissors" / "shears"), all mapped to the one signature.

Files: the same as ``demo.py`` (official json, jsonl records, ``video_features.h5``,
``text_features.h5`` with the encoder's ``(L, D)`` token features, ``demo_meta.json``), plus
``rephrased_val.json``: for every validation query, the same question in a phrasing never used in
training (synonyms, reordered words), with its clip and window: what ``tools/ground.py`` and the
predictor test ask.

Deterministic for a seed up to the text encoder's float rounding (same machine: same bytes).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from libs.core.errors import ConfigError
from libs.utils.io import save_json

from .annotations import OFFICIAL_SPLIT_FILES
from .demo import (
    DISTRACTORS_PER_CLIP,
    FEAT_STRIDE,
    FPS,
    JSONL_FILES,
    META_FILE,
    NO_VERB,
    OBJECT_AMPLITUDE,
    QUERIES_MEAN,
    QUERIES_RANGE,
    QUERIES_STD,
    SCENE_AMPLITUDE,
    SPLITS,
    TEXT_STORE,
    VIDEO_STORE,
    _sample_duration,
    _sample_windows,
    _uid,
    clip_entry,
    demo_statistics,
    place_windows,
    write_split_files,
)
from .feature_store import write_store
from .text_encoders import TextEncoder

REPHRASED_FILE = "rephrased_val.json"

# objects and their names: the first name is the canonical one (slot_x in the annotations can be any)
WORDED_OBJECTS: Tuple[Tuple[str, ...], ...] = (
    ("scissors", "shears"),
    ("phone", "cellphone", "mobile phone"),
    ("knife", "kitchen knife"),
    ("keys", "car keys"),
    ("wallet", "purse"),
    ("hammer", "mallet"),
    ("screwdriver", "screw driver"),
    ("tape measure", "measuring tape", "metre tape"),
    ("laptop", "computer"),
    ("towel", "hand towel"),
    ("bucket", "pail"),
    ("frying pan", "pan", "skillet"),
    ("spoon", "teaspoon"),
    ("bowl", "dish"),
    ("remote control", "remote", "tv remote"),
    ("backpack", "bag", "rucksack"),
    ("gloves", "work gloves"),
    ("drill", "drill machine", "power drill"),
    ("cutting board", "chopping board"),
    ("sponge", "scrubber"),
    ("kettle", "electric kettle"),
    ("pen", "marker"),
    ("book", "novel"),
    ("ladder", "step ladder"),
    ("wrench", "spanner"),
    ("broom", "sweeping brush"),
    ("onion", "red onion"),
    ("bottle", "water bottle"),
    ("cup", "mug"),
    ("paint brush", "paintbrush"),
)

# training phrasings, one per real Ego4D NLQ template: (template, pattern, verbs as (slot, text))
WORDED_TEMPLATES: Tuple[Tuple[str, str, Tuple[Tuple[str, str], ...]], ...] = (
    ("Place: Where did I put X?", "Where did I put the {x}?", (("put", "put"),)),
    ("Objects: Where is object X?", "Where was the {x}?", ()),
    ("Objects: Where is my object X?", "Where is my {x}?", ()),
    ("Objects: In what location did I see object X ?", "In what location did I see the {x}?", ()),
    ("Objects: Where is object X before / after event Y?", "Where was the {x} before I {v} it?",
     (("pick", "picked"), ("move", "moved"), ("wash", "washed"), ("drop", "dropped"), ("hold", "held"))),
    ("Objects: How many X’s? (quantity question)", "How many times did I {v} the {x}?",
     (("take", "take"), ("wash", "wash"), ("open", "open"), ("pick", "pick up"), ("move", "move"))),
    ("Objects: What did I put in X?", "What did I put in the {x}?", (("put", "put"),)),
    ("Objects: State of an object", "Did I leave the {x} open?", ()),
    ("Objects: What X is Y?", "What color is the {x}?", ()),
    ("People: Who did I interact with when I did activity X?",
     "Who did I talk to when I was holding the {x}?", (("hold", "holding"),)),
)

# phrasings never used in training: synonyms ("leave", "placed") and reordered words
REPHRASINGS: Tuple[str, ...] = (
    "Where did I leave the {x}?",
    "The {x}, where did I put it?",
    "Where have I placed my {x}?",
    "Where could I have left the {x}?",
    "In which place did I last see the {x}?",
    "Where did the {x} end up?",
)


class ObjectVocabulary:
    """The objects of a worded demo, their names and their ``(C_v,)`` video signatures.

    ``signatures[i]`` = fixed random projection of object ``i``'s embedding (mean token feature
    of each of its names, averaged over names), centred over the vocabulary, unit variance.
    """

    def __init__(self, names: Sequence[Tuple[str, ...]], encoder: TextEncoder, video_dim: int,
                 seed: int) -> None:
        if len(names) < 2:
            raise ConfigError(f"worded demo: need at least 2 objects, got {len(names)}")
        self.names = [tuple(n) for n in names]
        phrases = [name for object_names in self.names for name in object_names]
        token_feats = encoder.encode_tokens(phrases)  # per phrase (L_i, D)
        phrase_means = iter([np.asarray(f, dtype=np.float64).mean(axis=0) for f in token_feats])
        embeddings = np.stack([np.mean([next(phrase_means) for _ in object_names], axis=0)
                               for object_names in self.names])  # (N, D)
        centred = embeddings - embeddings.mean(axis=0, keepdims=True)  # (N, D)
        rng = np.random.default_rng([seed, 4])
        projection = rng.standard_normal((video_dim, centred.shape[1])) / math.sqrt(centred.shape[1])
        signatures = centred @ projection.T  # (N, C_v)
        self.signatures = signatures / signatures.std(axis=1, keepdims=True)

    def __len__(self) -> int:
        return len(self.names)


def _sample_object_query(rng: np.random.Generator, vocab: ObjectVocabulary, obj: int) -> Dict[str, Any]:
    """Template fields and text of one training-style question about object ``obj``."""
    names = vocab.names[obj]
    name = names[int(rng.integers(len(names)))]
    template, pattern, verbs = WORDED_TEMPLATES[int(rng.integers(len(WORDED_TEMPLATES)))]
    verb_slot, verb_text = verbs[int(rng.integers(len(verbs)))] if verbs else (NO_VERB, "")
    text = pattern.format(x=name, v=verb_text)
    return {"template": template, "query": text, "slot_x": name, "verb_x": verb_slot,
            "raw_tags": [template, text, name, verb_slot]}


def _sample_windows_in_range(rng: np.random.Generator, duration: float, count: int,
                             length_range: Tuple[float, float]) -> List[Tuple[float, float]]:
    """``count`` windows (s) of uniform length in ``length_range``, not overlapping when 50 tries allow it."""
    return place_windows(rng, duration, count, lambda: float(rng.uniform(*length_range)))


def _make_worded_clip(rng: np.random.Generator, vocab: ObjectVocabulary, video_offset: float, split: str,
                      video_dim: int, duration_range: Optional[Tuple[float, float]],
                      window_range: Optional[Tuple[float, float]], queries_range: Optional[Tuple[int, int]],
                      distractors: int):
    """One clip: json entry, ``(T, C_v)`` features, query_id -> text, and its rephrased questions."""
    if duration_range is None:
        duration = _sample_duration(rng)
    else:
        duration = round(float(rng.uniform(*duration_range)), 3)
    num_feats = int(round(duration * FPS / FEAT_STRIDE))
    if queries_range is None:
        num_queries = int(np.clip(round(rng.normal(QUERIES_MEAN, QUERIES_STD)), *QUERIES_RANGE))
    else:
        num_queries = int(rng.integers(queries_range[0], queries_range[1] + 1))
    num_queries = max(1, min(num_queries, len(vocab) - distractors))
    objects = [int(i) for i in rng.permutation(len(vocab))[:num_queries + distractors]]
    if window_range is None:
        windows = _sample_windows(rng, duration, len(objects))
    else:
        windows = _sample_windows_in_range(rng, duration, len(objects), window_range)

    scene = SCENE_AMPLITUDE * rng.standard_normal(video_dim)
    feats = scene[None, :] + rng.standard_normal((num_feats, video_dim))  # (T, C_v)
    for obj, (start, end) in zip(objects, windows):
        first = min(int(round(start * FPS / FEAT_STRIDE)), num_feats - 1)
        last = max(int(round(end * FPS / FEAT_STRIDE)), first + 1)
        feats[first:last] += OBJECT_AMPLITUDE * vocab.signatures[obj][None, :]

    queries = [_sample_object_query(rng, vocab, obj) for obj in objects[:num_queries]]
    clip, texts = clip_entry(rng, queries, windows[:num_queries], duration, video_offset, split)
    rephrased = []
    for (query_id, text), obj, query, window in zip(texts.items(), objects, queries, windows):
        pattern = REPHRASINGS[int(rng.integers(len(REPHRASINGS)))]
        rephrased.append({"clip_uid": clip["clip_uid"], "query_id": query_id, "query": text,
                          "rephrased": pattern.format(x=query["slot_x"]), "object": vocab.names[obj][0],
                          "window": list(window)})
    return clip, feats, texts, rephrased


def make_worded_demo_data(out_dir: str, encoder: TextEncoder, seed: int = 0, num_train_clips: int = 48,
                          num_val_clips: int = 12, num_test_clips: int = 12, video_dim: int = 128,
                          num_objects: Optional[int] = None,
                          duration_range: Optional[Tuple[float, float]] = None,
                          window_range: Optional[Tuple[float, float]] = None,
                          queries_range: Optional[Tuple[int, int]] = None,
                          distractors_per_clip: int = DISTRACTORS_PER_CLIP,
                          video_dtype: str = "float16") -> Dict[str, Any]:
    """Write the worded demo to ``out_dir`` (see the module docstring); returns ``demo_meta.json``'s content.

    ``encoder`` makes the token features (its ``name`` goes into the meta and must be the config's
    ``dataset.text_encoder``). ``num_objects`` limits the vocabulary to its first objects;
    ``duration_range`` (s), ``window_range`` (s, uniform lengths) and ``queries_range`` replace the
    real-split distributions (small, fast tests).
    """
    vocabulary = WORDED_OBJECTS[:num_objects] if num_objects else WORDED_OBJECTS
    if distractors_per_clip < 0 or distractors_per_clip >= len(vocabulary):
        raise ConfigError(f"worded demo: distractors_per_clip {distractors_per_clip} must be in "
                          f"[0, {len(vocabulary) - 1}] for {len(vocabulary)} objects")
    if duration_range is not None and not 0 < duration_range[0] <= duration_range[1]:
        raise ConfigError(f"worded demo: duration_range {duration_range} must be (low, high) with 0 < low <= high")
    if window_range is not None and not 0 < window_range[0] <= window_range[1]:
        raise ConfigError(f"worded demo: window_range {window_range} must be (low, high) with 0 < low <= high")
    if queries_range is not None and not 1 <= queries_range[0] <= queries_range[1]:
        raise ConfigError(f"worded demo: queries_range {queries_range} must be (low, high) with 1 <= low <= high")
    os.makedirs(out_dir, exist_ok=True)
    vocab = ObjectVocabulary(vocabulary, encoder, video_dim, seed)
    num_clips = {"train": num_train_clips, "val": num_val_clips, "test": num_test_clips}
    all_feats: Dict[str, np.ndarray] = {}
    all_texts: Dict[str, str] = {}
    records_by_split: Dict[str, List[dict]] = {}
    rephrased: List[dict] = []
    for split in SPLITS:
        rng = np.random.default_rng([seed, 20 + SPLITS.index(split)])  # splits draw independently
        videos = []
        for _ in range(num_clips[split]):  # one clip per video: the video layout does not matter here
            offset = float(rng.integers(6)) * 480.0  # the clip's place in its (unseen) video
            clip, feats, texts, clip_rephrased = _make_worded_clip(
                rng, vocab, offset, split, video_dim, duration_range, window_range, queries_range,
                distractors_per_clip)
            all_feats[clip["clip_uid"]] = feats
            all_texts.update(texts)
            if split == "val":
                rephrased.extend(clip_rephrased)
            videos.append({"video_uid": _uid(rng), "split": split, "clips": [clip]})
        records_by_split[split] = write_split_files(out_dir, split, videos, "worded demo data",
                                                    "libs/datasets/demo_worded.py")

    query_ids = sorted(all_texts)
    token_feats = encoder.encode_tokens([all_texts[q] for q in query_ids])  # per query (L_i, D)
    write_store(os.path.join(out_dir, VIDEO_STORE), sorted(all_feats.items()), kind="hdf5", dtype=video_dtype)
    write_store(os.path.join(out_dir, TEXT_STORE), list(zip(query_ids, token_feats)), kind="hdf5", dtype="float32")
    save_json(rephrased, os.path.join(out_dir, REPHRASED_FILE), indent=1)
    meta = {
        "seed": seed,
        "variant": "worded",
        "text_encoder": encoder.name,
        "num_clips": num_clips,
        "num_objects": len(vocabulary),
        "video_dim": video_dim,
        "text_dim": int(encoder.dim),
        "fps": FPS,
        "feat_stride": FEAT_STRIDE,
        "files": {"official": dict(OFFICIAL_SPLIT_FILES), "jsonl": dict(JSONL_FILES),
                  "video_store": VIDEO_STORE, "text_store": TEXT_STORE, "rephrased_val": REPHRASED_FILE},
        "statistics": demo_statistics(records_by_split),
    }
    save_json(meta, os.path.join(out_dir, META_FILE), indent=2)
    return meta
