"""The built-in demo data: a small Ego4D-NLQ-like dataset in exactly the real formats.

Everything is derived from one seed, so the same call writes byte-identical files. Written under
``out_dir``:

* ``nlq_train.json``, ``nlq_val.json``, ``nlq_test_unannotated.json``: official NLQ v2 json
  (videos -> clips -> annotations -> language_queries; the test file holds query text only);
* ``ego4d_nlq_{train,val,test}_v2.jsonl``: the converted records (``annotations.py``);
* ``video_features.h5``: one ``(T, video_dim)`` float16 array per ``clip_uid`` at 1.87 features/s
  (``feat_stride`` 16.043 at 30 fps), as the real InternVideo features;
* ``text_features.h5``: one ``(L, text_dim)`` float32 array per ``query_id`` (every split), one
  row per token of the normalised query (CLIP-style: no SOT/EOT);
* ``demo_meta.json``: the generation parameters and the statistics of what was written.

A learnable cross-modal signal: each query names an object (and often a verb) with a real
Ego4D template. A token's feature is its word's fixed random embedding plus small noise; the
tokens of object words also carry a shared "noun" direction, as a real text encoder's features
carry a word's part of speech (one handle on "the object word" for the cross-attention, the same
for every object). Inside
a query's window the video carries the object's *signature* (a fixed random projection of the
object's word embeddings, plus a weaker verb signature); the other queries' windows carry
their objects, and the time between windows is covered, back to back, by objects no query of
the clip names (with a verb's signature as often as templates name one). So *some* object is
always in view, windows and fillers look alike, and only reading the question tells which
window answers it. Clip lengths, window lengths and queries per clip follow the real val split
(most clips exactly 480 s, some shorter; median window about 4 s with a long tail; about 11
queries per clip).
"""
from __future__ import annotations

import math
import os
import uuid
import zlib
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from libs.utils.io import save_json

from .annotations import OFFICIAL_SPLIT_FILES, official_to_records, write_jsonl
from .feature_store import write_store

# rate of the real features: one per 16.043 frames at 30 fps (spec 3)
FPS = 30.0
FEAT_STRIDE = 16.043
SPLITS = ("train", "val", "test")
JSONL_FILES = {split: f"ego4d_nlq_{split}_v2.jsonl" for split in SPLITS}
VIDEO_STORE = "video_features.h5"
TEXT_STORE = "text_features.h5"
META_FILE = "demo_meta.json"

# distributions calibrated on the real val split (415 clips, 4,554 queries)
FULL_CLIP_SEC = 480.0          # 78% of clips are (almost exactly) 480 s
FULL_CLIP_PROB = 0.8
SHORT_CLIP_RANGE = (200.0, 475.0)  # the rest are shorter (median about 390 s)
WINDOW_LOG_MEDIAN = math.log(4.0)  # window length: lognormal, median 4 s, p90 about 18 s
WINDOW_LOG_SIGMA = 1.2
WINDOW_RANGE = (0.4, 150.0)
QUERIES_MEAN, QUERIES_STD, QUERIES_RANGE = 11.0, 5.0, (1, 20)
QUERIES_PER_ANNOTATION = 8     # annotations hold about 6-7 queries each
TWO_CLIP_VIDEO_PROB = 0.35     # 1.37 clips per video in val
DISTRACTORS_PER_CLIP = 3

# signal strengths (noise has unit variance per channel)
OBJECT_AMPLITUDE = 0.8
VERB_AMPLITUDE = 0.4
SCENE_AMPLITUDE = 0.5
TOKEN_NOISE = 0.1
# the shared direction of object-word tokens, in text features only (at 1.0 object tokens look
# too much alike and learning was slower; single runs, see docs/demo.md)
NOUN_AMPLITUDE = 0.5

OBJECTS = (
    "knife", "phone", "cup", "bowl", "screwdriver", "tape measure", "spoon", "plate", "bottle",
    "wallet", "keys", "hammer", "scissors", "towel", "pan", "laptop", "paint brush", "drill",
    "glove", "bucket", "sponge", "chair", "box", "bag", "remote", "lid", "broom", "pen", "book",
    "cable", "jar", "kettle", "mug", "nail", "plank", "shoe", "pot", "tray", "rag", "ladder",
    "cutting board", "wrench", "onion", "tomato", "flour",
)
OBJECT_WORDS = frozenset(word for obj in OBJECTS for word in obj.split())
VERBS = ("put", "pour", "cut", "take", "wash", "open", "hold", "pick", "drop", "move")
NO_VERB = "[verb_not_applicable]"

# (official template, query pattern, verbs the pattern may use: () = no verb slot)
TEMPLATES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("Place: Where did I put X?", "Where did I put the {x}?", ("put",)),
    ("Objects: Where is object X?", "Where was the {x}?", ()),
    ("Objects: What did I put in X?", "What did I {v} in the {x}?", ("put", "pour")),
    ("Objects: How many X’s? (quantity question)", "How many times did I {v} the {x}?",
     ("take", "wash", "open", "pick", "move")),
    ("Objects: In what location did I see object X ?", "In what location did I see the {x}?", ()),
    ("Objects: What X did I Y?", "What {x} did I {v}?", ("cut", "take", "hold", "wash", "pick")),
    ("Objects: Where is object X before / after event Y?", "Where was the {x} before I {v} it?",
     ("pick", "move", "wash", "drop", "hold")),
    ("Objects: State of an object", "Was the {x} open?", ()),
    ("Objects: Where is my object X?", "Where is my {x}?", ()),
)

# share of filler segments that also carry a verb's signature: as many as templates that name a
# verb, so that query windows and fillers look alike to a model that does not read the question
FILLER_VERB_PROB = sum(1 for _, _, verbs in TEMPLATES if verbs) / len(TEMPLATES)


def normalise_query(text: str) -> str:
    """The text extractor's normalisation (spec 3): strip ``.``, space, ``?`` at both ends, lower-case, add ``?``."""
    return text.strip(". ?").lower() + "?"


def query_tokens(text: str) -> List[str]:
    """Tokens of a query as the demo's text features see them: words, then the final ``?``."""
    return normalise_query(text)[:-1].split() + ["?"]


class WordSpace:
    """Fixed random embeddings per word (seeded by the word), and the video signature of words."""

    def __init__(self, seed: int, text_dim: int, video_dim: int) -> None:
        self.seed, self.text_dim, self.video_dim = seed, text_dim, video_dim
        rng = np.random.default_rng([seed, 1])
        self.projection = rng.standard_normal((video_dim, text_dim)) / math.sqrt(text_dim)  # (C_v, C_t)
        self.noun_direction = np.random.default_rng([seed, 4]).standard_normal(text_dim)  # (C_t,)
        self._cache: Dict[str, np.ndarray] = {}

    def embedding(self, word: str) -> np.ndarray:
        """``(C_t,)`` float64 embedding of a word; the same for every run with this seed."""
        if word not in self._cache:
            rng = np.random.default_rng([self.seed, 2, zlib.crc32(word.encode("utf-8"))])
            self._cache[word] = rng.standard_normal(self.text_dim)
        return self._cache[word]

    def token(self, word: str) -> np.ndarray:
        """``(C_t,)`` noise-free token feature: the embedding, plus the noun direction for object words."""
        if word in OBJECT_WORDS:
            return self.embedding(word) + NOUN_AMPLITUDE * self.noun_direction
        return self.embedding(word)

    def signature(self, phrase: str) -> np.ndarray:
        """``(C_v,)`` unit-variance video signature of a phrase (mean of its word embeddings, projected)."""
        mean = np.mean([self.embedding(w) for w in phrase.split()], axis=0)
        sig = self.projection @ mean
        return sig / sig.std()


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _sample_duration(rng: np.random.Generator) -> float:
    if rng.random() < FULL_CLIP_PROB:
        return FULL_CLIP_SEC
    return round(float(rng.uniform(*SHORT_CLIP_RANGE)), 3)


def _sample_windows(rng: np.random.Generator, duration: float, count: int) -> List[Tuple[float, float]]:
    """``count`` windows (s) of lognormal length; overlaps are avoided when 50 tries allow it."""
    return place_windows(rng, duration, count,
                         lambda: float(np.clip(rng.lognormal(WINDOW_LOG_MEDIAN, WINDOW_LOG_SIGMA), *WINDOW_RANGE)))


def place_windows(rng: np.random.Generator, duration: float, count: int,
                  draw_length: Callable[[], float]) -> List[Tuple[float, float]]:
    """``count`` windows (s), each of ``draw_length()`` (at most 40% of the clip) at a uniform
    start; overlaps are avoided when 50 tries allow it."""
    windows: List[Tuple[float, float]] = []
    for _ in range(count):
        length = min(draw_length(), 0.4 * duration)
        for _try in range(50):
            start = float(rng.uniform(0.0, duration - length))
            if all(start + length + 0.5 < s or start > e + 0.5 for s, e in windows):
                break
        windows.append((round(start, 5), round(start + length, 5)))
    return windows


def _make_query(rng: np.random.Generator, obj: str) -> Dict[str, Any]:
    """Template fields and text of one query about ``obj``."""
    template, pattern, verbs = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    verb = str(verbs[int(rng.integers(len(verbs)))]) if verbs else None
    text = pattern.format(x=obj, v=verb)
    fields = {"template": template, "query": text, "slot_x": obj, "verb_x": verb or NO_VERB}
    fields["raw_tags"] = [template, text, obj, verb or NO_VERB]
    return fields


def clip_entry(rng: np.random.Generator, queries: List[Dict[str, Any]], windows: List[Tuple[float, float]],
               duration: float, video_offset: float, split: str) -> Tuple[dict, Dict[str, str]]:
    """A clip's official json entry (queries in annotation groups of up to 8) and query_id -> text.

    ``queries[k]`` (template fields, see ``_make_query``) is answered by ``windows[k]`` (s).
    Shared by the worded demo (``demo_worded.py``), which phrases its queries differently.
    """
    num_queries = len(queries)
    num_annotations = math.ceil(num_queries / QUERIES_PER_ANNOTATION)
    annotations, texts = [], {}
    for group in np.array_split(np.arange(num_queries), num_annotations):
        ann_uid = _uid(rng)
        language_queries = []
        for i, k in enumerate(group):
            start, end = windows[k]
            entry = {"query": queries[k]["query"]}
            if split != "test":
                entry = {
                    "clip_start_sec": start, "clip_end_sec": end,
                    "video_start_sec": video_offset + start, "video_end_sec": video_offset + end,
                    "video_start_frame": int(round((video_offset + start) * FPS)),
                    "video_end_frame": int(round((video_offset + end) * FPS)),
                    **queries[k],
                }
            language_queries.append(entry)
            texts[f"{ann_uid}_{i}"] = queries[k]["query"]
        annotations.append({"annotation_uid": ann_uid, "request_uid": _uid(rng),
                            "language_queries": language_queries})
    clip = {
        "clip_uid": _uid(rng),
        "video_start_sec": video_offset, "video_end_sec": video_offset + duration,
        "video_start_frame": int(round(video_offset * FPS)),
        "video_end_frame": int(round((video_offset + duration) * FPS)),
        "clip_start_sec": 0, "clip_end_sec": duration,
        "clip_start_frame": 0, "clip_end_frame": int(round(duration * FPS)),
        "source_clip_uid": _uid(rng),
        "annotations": annotations,
    }
    return clip, texts


def _make_clip(rng: np.random.Generator, words: WordSpace, video_offset: float, split: str,
               video_dim: int) -> Tuple[dict, np.ndarray, Dict[str, str]]:
    """One clip: its official json entry, its ``(T, C_v)`` features and query_id -> query text."""
    duration = _sample_duration(rng)
    num_feats = int(round(duration * FPS / FEAT_STRIDE))
    num_queries = int(np.clip(round(rng.normal(QUERIES_MEAN, QUERIES_STD)), *QUERIES_RANGE))
    objects = [OBJECTS[i] for i in rng.permutation(len(OBJECTS))[:num_queries + DISTRACTORS_PER_CLIP]]
    windows = _sample_windows(rng, duration, len(objects))

    # video: clip-level scene + noise, plus each window's object (and verb) signature
    scene = SCENE_AMPLITUDE * rng.standard_normal(video_dim)
    feats = scene[None, :] + rng.standard_normal((num_feats, video_dim))  # (T, C_v)
    queries = [_make_query(rng, obj) for obj in objects[:num_queries]]
    for k, (obj, window) in enumerate(zip(objects, windows)):
        signal = OBJECT_AMPLITUDE * words.signature(obj)
        if k < num_queries and queries[k]["verb_x"] != NO_VERB:
            signal = signal + VERB_AMPLITUDE * words.signature(queries[k]["verb_x"])
        feats[_feature_span(window, num_feats)] += signal[None, :]
    _fill_background(rng, words, feats, windows, [o for o in OBJECTS if o not in objects[:num_queries]])

    clip, texts = clip_entry(rng, queries, windows[:num_queries], duration, video_offset, split)
    return clip, feats, texts


def _feature_span(window: Tuple[float, float], num_feats: int) -> slice:
    """The feature positions of a window in seconds (at least one)."""
    first = min(int(round(window[0] * FPS / FEAT_STRIDE)), num_feats - 1)
    return slice(first, max(int(round(window[1] * FPS / FEAT_STRIDE)), first + 1))


def _fill_background(rng: np.random.Generator, words: WordSpace, feats: np.ndarray,
                     windows: List[Tuple[float, float]], fillers: List[str]) -> None:
    """Cover the time between the windows with back-to-back segments (lengths drawn as the
    windows') of objects no query of the clip names, so that *some* object is everywhere and
    only the question tells which window answers it (as in real egocentric video)."""
    covered = np.zeros(len(feats), dtype=bool)
    for window in windows:
        covered[_feature_span(window, len(feats))] = True
    t = 0
    while t < len(feats):
        if covered[t]:
            t += 1
            continue
        length = float(np.clip(rng.lognormal(WINDOW_LOG_MEDIAN, WINDOW_LOG_SIGMA), *WINDOW_RANGE))
        end = t
        while end < len(feats) and end < t + max(1, round(length * FPS / FEAT_STRIDE)) and not covered[end]:
            end += 1
        signal = OBJECT_AMPLITUDE * words.signature(fillers[int(rng.integers(len(fillers)))])
        if rng.random() < FILLER_VERB_PROB:  # as often as a query's template names a verb
            signal = signal + VERB_AMPLITUDE * words.signature(VERBS[int(rng.integers(len(VERBS)))])
        feats[t:end] += signal[None, :]
        t = end


def _token_features(rng: np.random.Generator, words: WordSpace, text: str) -> np.ndarray:
    """``(L, C_t)`` float32: each token's feature (``WordSpace.token``) plus small noise."""
    tokens = np.stack([words.token(t) for t in query_tokens(text)])  # (L, C_t)
    return (tokens + TOKEN_NOISE * rng.standard_normal(tokens.shape)).astype(np.float32)


def _make_split(seed: int, split: str, num_clips: int, words: WordSpace,
                video_dim: int) -> Tuple[List[dict], Dict[str, np.ndarray], Dict[str, str]]:
    """The official json ``videos`` of one split, its clip features and its query texts (by query_id)."""
    rng = np.random.default_rng([seed, 10 + SPLITS.index(split)])  # splits draw independently
    videos, feats, texts = [], {}, {}
    made = 0
    while made < num_clips:
        num = 2 if (num_clips - made >= 2 and rng.random() < TWO_CLIP_VIDEO_PROB) else 1
        clips = []
        for slot in rng.permutation(6)[:num]:
            clip, clip_feats, clip_texts = _make_clip(rng, words, float(slot) * FULL_CLIP_SEC, split, video_dim)
            clips.append(clip)
            feats[clip["clip_uid"]] = clip_feats
            texts.update(clip_texts)
        videos.append({"video_uid": _uid(rng), "split": split, "clips": clips})
        made += num
    return videos, feats, texts


def write_split_files(out_dir: str, split: str, videos: List[dict], description: str,
                      generator: str) -> List[dict]:
    """Write a split's official json (its ``videos``) and the converted jsonl; returns the records."""
    data = {"version": "2.0", "date": "demo", "description": f"NLQ Annotations ({split}), {description}",
            "metadata": f"generated by {generator}", "videos": videos}
    save_json(data, os.path.join(out_dir, OFFICIAL_SPLIT_FILES[split]))
    records, _ = official_to_records(data, split, source=OFFICIAL_SPLIT_FILES[split])
    write_jsonl(records, os.path.join(out_dir, JSONL_FILES[split]))
    return records


def demo_statistics(records_by_split: Dict[str, List[dict]]) -> Dict[str, Any]:
    """Clip, window and query-count statistics of converted records (all splits together)."""
    records = [r for split in SPLITS for r in records_by_split.get(split, [])]
    durations: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    for r in records:
        durations[r["video_id"]] = r["duration"]
        counts[r["video_id"]] = counts.get(r["video_id"], 0) + 1
    windows = [e - s for r in records for s, e in r.get("timestamps", [])]
    dur = np.array(list(durations.values()))
    return {
        "clips": len(durations),
        "queries": len(records),
        "median_clip_sec": float(np.median(dur)),
        "fraction_clips_480s": float(np.mean(dur == FULL_CLIP_SEC)),
        "max_features": int(round(dur.max() * FPS / FEAT_STRIDE)),
        "median_window_sec": float(np.median(windows)) if windows else None,
        "p90_window_sec": float(np.percentile(windows, 90)) if windows else None,
        "mean_queries_per_clip": float(np.mean(list(counts.values()))),
    }


def make_demo_data(out_dir: str, seed: int = 0, num_train_clips: int = 192, num_val_clips: int = 12,
                   num_test_clips: int = 12, video_dim: int = 128, text_dim: int = 64,
                   video_dtype: str = "float16") -> Dict[str, Any]:
    """Write the demo dataset to ``out_dir`` (see the module docstring); returns ``demo_meta.json``'s content."""
    os.makedirs(out_dir, exist_ok=True)
    words = WordSpace(seed, text_dim, video_dim)
    text_rng = np.random.default_rng([seed, 3])
    num_clips = {"train": num_train_clips, "val": num_val_clips, "test": num_test_clips}
    all_feats: Dict[str, np.ndarray] = {}
    all_tokens: Dict[str, np.ndarray] = {}
    records_by_split: Dict[str, List[dict]] = {}
    for split in SPLITS:
        videos, feats, texts = _make_split(seed, split, num_clips[split], words, video_dim)
        records_by_split[split] = write_split_files(out_dir, split, videos, "demo data", "libs/datasets/demo.py")
        all_feats.update(feats)
        for query_id in sorted(texts):
            all_tokens[query_id] = _token_features(text_rng, words, texts[query_id])
    write_store(os.path.join(out_dir, VIDEO_STORE), sorted(all_feats.items()), kind="hdf5", dtype=video_dtype)
    write_store(os.path.join(out_dir, TEXT_STORE), sorted(all_tokens.items()), kind="hdf5", dtype="float32")
    meta = {
        "seed": seed,
        "num_clips": num_clips,
        "video_dim": video_dim,
        "text_dim": text_dim,
        "fps": FPS,
        "feat_stride": FEAT_STRIDE,
        "files": {"official": dict(OFFICIAL_SPLIT_FILES), "jsonl": dict(JSONL_FILES),
                  "video_store": VIDEO_STORE, "text_store": TEXT_STORE},
        "statistics": demo_statistics(records_by_split),
    }
    save_json(meta, os.path.join(out_dir, META_FILE), indent=2)
    return meta
