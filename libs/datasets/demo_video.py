"""The pixel demo: rendered videos of coloured shapes, with questions about when each was seen.

``render_video_demo(out_dir, seed)`` writes real video files (PyAV, MPEG-4 in ``.mp4``) and
annotations in the real formats; features are then made from the pixels by the real extractor
(``libs.video``), so the demo runs the whole path from video to answers (``tools/make_video_demo.py``).

Each video (``videos/<clip_uid>.mp4``, 96 x 96 px at 10 fps, 48-80 s) shows a textured grey
background that pans slowly, like a head-mounted camera. One after another, ``OBJECTS_PER_VIDEO``
objects (a coloured circle, square or triangle, every one a different colour) appear, move across
the view for 4-9 s and leave; gaps of 0.5-2.5 s hold only the background. Questions ask when one
of them was seen ("when did I see the red circle?", several phrasings); each video has
``QUERIES_PER_VIDEO`` questions, the other objects are distractors. A model that ignores the
question can only pick one of the objects at random; one that reads the colour word finds its
window.

Files under ``out_dir``: ``videos/``, the official json (``nlq_train.json``, ``nlq_val.json``),
the converted jsonl records, ``demo_meta.json``, and ``example.mp4``, one more video in no split,
with ``example.json`` saying what it shows when: the video to ask your own questions about. Deterministic for a seed (same bytes on a
machine; the encoder's output may differ in the last bits across FFmpeg builds).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

import numpy as np

from libs.core.errors import missing_package
from libs.utils.io import save_json

from .annotations import OFFICIAL_SPLIT_FILES
from .demo import JSONL_FILES, META_FILE, _uid, clip_entry, write_split_files

SIZE = 96                 # frame width and height (px)
FILE_FPS = 10
OBJECTS_PER_VIDEO = 8
QUERIES_PER_VIDEO = 4
VISIBLE_RANGE = (4.0, 9.0)  # seconds an object is in view
GAP_RANGE = (0.5, 2.5)      # seconds of background between objects
EDGE_RANGE = (1.0, 4.0)     # background before the first and after the last object
OBJECT_RADIUS = (13, 19)    # px
PAN_SPEED = 3.0             # background pan, px per second
VIDEO_DIR = "videos"
EXAMPLE_VIDEO, EXAMPLE_CONTENTS = "example.mp4", "example.json"
SPLITS = ("train", "val")
COLOURS = {
    "red": (215, 35, 35), "green": (35, 170, 60), "blue": (40, 70, 225), "yellow": (240, 215, 30),
    "pink": (245, 120, 190), "orange": (245, 135, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = (
    "When did I see the {colour} {shape}?",
    "Where was the {colour} {shape}?",
    "When was the {colour} {shape} in view?",
    "At what time did the {colour} {shape} pass by?",
)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A ``(SIZE, 2 * SIZE, 3)`` float texture: smooth grey blotches with a faint tint, wide
    enough to pan across."""
    coarse = rng.uniform(85, 170, size=(7, 13))
    rows = np.linspace(0, coarse.shape[0] - 1, SIZE)
    cols = np.linspace(0, coarse.shape[1] - 1, 2 * SIZE)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, coarse.shape[0] - 1), np.minimum(c0 + 1, coarse.shape[1] - 1)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    grey = ((1 - fr) * ((1 - fc) * coarse[r0][:, c0] + fc * coarse[r0][:, c1])
            + fr * ((1 - fc) * coarse[r1][:, c0] + fc * coarse[r1][:, c1]))
    grey = grey + rng.normal(0, 6, size=grey.shape)  # fine grain
    tint = rng.uniform(-8, 8, size=3)
    return np.clip(grey[:, :, None] + tint[None, None, :], 0, 255)


_PIXEL_Y, _PIXEL_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # pixel centres


def _shape_mask(shape: str, cx: float, cy: float, radius: float) -> np.ndarray:
    """``(SIZE, SIZE)`` bool: pixels inside the shape centred at (cx, cy)."""
    dx, dy = _PIXEL_X - cx, _PIXEL_Y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * 0.85
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # triangle pointing up: inside the three half-planes
    top, base = -radius, radius * 0.8
    inside_y = (dy >= top) & (dy <= base)
    half_width = (dy - top) / (base - top) * radius
    return inside_y & (np.abs(dx) <= half_width)


def _plan_video(rng: np.random.Generator) -> Tuple[float, List[Dict[str, Any]]]:
    """The video's duration and its objects: colour, shape, size, visible window, path."""
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:OBJECTS_PER_VIDEO]]
    t = float(rng.uniform(*EDGE_RANGE))
    objects = []
    for colour in colours:
        visible = float(rng.uniform(*VISIBLE_RANGE))
        radius = float(rng.uniform(*OBJECT_RADIUS))
        margin = radius + 2
        start_xy = rng.uniform(margin, SIZE - margin, size=2)
        end_xy = rng.uniform(margin, SIZE - margin, size=2)
        objects.append({"colour": colour, "shape": SHAPES[int(rng.integers(len(SHAPES)))], "radius": radius,
                        "window": (round(t, 3), round(t + visible, 3)), "path": (start_xy, end_xy)})
        t += visible + float(rng.uniform(*GAP_RANGE))
    duration = t - GAP_RANGE[0] + float(rng.uniform(*EDGE_RANGE))  # last gap replaced by the tail
    return round(duration, 3), objects


def _frames(rng: np.random.Generator, duration: float, objects: List[Dict[str, Any]]):
    """The video's RGB uint8 frames, one per 1 / FILE_FPS s."""
    texture = _background(rng)
    for n in range(int(round(duration * FILE_FPS))):
        t = n / FILE_FPS
        shift = int(t * PAN_SPEED) % SIZE
        frame = texture[:, shift:shift + SIZE].copy()
        for obj in objects:
            start, end = obj["window"]
            if start <= t < end:
                a = (t - start) / (end - start)
                (x0, y0), (x1, y1) = obj["path"]
                mask = _shape_mask(obj["shape"], x0 + a * (x1 - x0), y0 + a * (y1 - y0), obj["radius"])
                frame[mask] = COLOURS[obj["colour"]]
        yield frame.astype(np.uint8)


def write_mp4(path: str, frames, fps: int = FILE_FPS) -> None:
    """Encode RGB frames as MPEG-4 Part 2 (in every FFmpeg build) into ``path``, atomically."""
    try:
        import av
    except ImportError as e:
        raise missing_package("av", "rendering the pixel demo (PyAV)", "pip install -e .[video]") from e
    partial = path + ".partial.mp4"
    with av.open(partial, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 600_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(partial, path)


def _statistics(records_by_split: Dict[str, List[dict]]) -> Dict[str, Any]:
    records = [r for split in SPLITS for r in records_by_split[split]]
    durations = {r["video_id"]: r["duration"] for r in records}
    windows = [e - s for r in records for s, e in r["timestamps"]]
    return {"videos": len(durations), "queries": len(records), "seconds_of_video": round(sum(durations.values()), 1),
            "median_video_sec": float(np.median(list(durations.values()))),
            "median_window_sec": float(np.median(windows))}


def render_example(out_dir: str, seed: int = 0) -> List[Dict[str, Any]]:
    """``example.mp4`` (a video of no split) and ``example.json``: its objects, in order of
    appearance, each with the seconds it is in view."""
    rng = np.random.default_rng([seed, 99])
    duration, objects = _plan_video(rng)
    path = os.path.join(out_dir, EXAMPLE_VIDEO)
    if not os.path.exists(path):
        write_mp4(path, _frames(np.random.default_rng(int(rng.integers(2**31))), duration, objects))
    contents = [{"object": f"{obj['colour']} {obj['shape']}", "in_view_s": list(obj["window"])} for obj in objects]
    save_json({"video": EXAMPLE_VIDEO, "duration_s": duration, "objects": contents},
              os.path.join(out_dir, EXAMPLE_CONTENTS), indent=1)
    return contents


def render_video_demo(out_dir: str, seed: int = 0, num_train_videos: int = 200, num_val_videos: int = 40,
                      progress: bool = True) -> Dict[str, Any]:
    """Render the videos and write the annotations under ``out_dir``; returns the meta record.

    Videos already rendered (same name) are kept: a killed run resumes.
    """
    from tqdm import tqdm

    video_dir = os.path.join(out_dir, VIDEO_DIR)
    os.makedirs(video_dir, exist_ok=True)
    counts = {"train": num_train_videos, "val": num_val_videos}
    records_by_split = {}
    with tqdm(total=sum(counts.values()), unit="video", desc="rendering", disable=not progress) as bar:
        for split in SPLITS:
            rng = np.random.default_rng([seed, 30 + SPLITS.index(split)])
            videos = []
            for _ in range(counts[split]):
                duration, objects = _plan_video(rng)
                asked = sorted(int(k) for k in rng.permutation(len(objects))[:QUERIES_PER_VIDEO])
                queries = []
                for k in asked:
                    obj = objects[k]
                    text = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(colour=obj["colour"], shape=obj["shape"])
                    queries.append({"template": "Objects: Where is object X?", "query": text,
                                    "slot_x": f"{obj['colour']} {obj['shape']}", "verb_x": "[verb_not_applicable]"})
                clip, _ = clip_entry(rng, queries, [objects[k]["window"] for k in asked], duration, 0.0, split)
                frame_seed = int(rng.integers(2**31))
                path = os.path.join(video_dir, f"{clip['clip_uid']}.mp4")
                if not os.path.exists(path):
                    write_mp4(path, _frames(np.random.default_rng(frame_seed), duration, objects))
                videos.append({"video_uid": _uid(rng), "split": split, "clips": [clip]})
                bar.update(1)
            records_by_split[split] = write_split_files(out_dir, split, videos, "pixel demo",
                                                        "libs/datasets/demo_video.py")
    render_example(out_dir, seed)
    meta = {"seed": seed, "variant": "pixels", "num_videos": counts, "size": SIZE, "file_fps": FILE_FPS,
            "objects_per_video": OBJECTS_PER_VIDEO, "queries_per_video": QUERIES_PER_VIDEO,
            "files": {"official": {s: OFFICIAL_SPLIT_FILES[s] for s in SPLITS},
                      "jsonl": {s: JSONL_FILES[s] for s in SPLITS}, "videos": VIDEO_DIR},
            "statistics": _statistics(records_by_split)}
    save_json(meta, os.path.join(out_dir, META_FILE), indent=2)
    return meta
