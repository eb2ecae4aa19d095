"""Questions about a video file: ``Grounder.ground_video`` and ``tools/ground.py --video`` extract
features with the config's backbone on its grid, cache them by file content, and answer as for
stored features."""
import importlib.util

import numpy as np
import pytest

from libs.core.errors import ConfigError
from libs.predict import Grounder
from libs.video.backbones import make_video_backbone
from libs.video.cache import cache_key
from libs.video.extract import extract_features
from libs.video.grid import FeatureGrid
from tests.test_predict import QUESTIONS, HashEncoder, assert_same_answers, toy_model, write_run
from tests.video_files import MeanRGB, write_video

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None,
                                reason="video extra not installed (pip install -e .[video])")

FPS, STRIDE, FRAMES = 10.0, 5.0, 5
COLOURS = [(255, 0, 0)] * 30 + [(0, 0, 255)] * 40 + [(0, 255, 0)] * 30  # 10 s at 10 fps


def video_grounder(**kwargs):
    return Grounder(toy_model(input_vid_dim=3), HashEncoder(), fps=FPS, feat_stride=STRIDE, num_frames=FRAMES,
                    **kwargs)


def test_ground_video_answers_as_for_its_features_and_caches_them(tmp_path):
    video = write_video(tmp_path / "kitchen.mkv", COLOURS, 10)
    grounder = video_grounder(video_backbone=make_video_backbone("mean_rgb"))
    cache = str(tmp_path / "cache")
    before = MeanRGB.calls
    answers = grounder.ground_video(video, QUESTIONS[:2], top_k=3, cache_dir=cache, progress=False)
    features, duration = extract_features(video, make_video_backbone("mean_rgb"), FeatureGrid(FPS, STRIDE, FRAMES))
    assert features.shape == (20, 3) and duration == pytest.approx(10.0, abs=1e-3)
    assert [a.clip for a in answers] == ["kitchen", "kitchen"] and answers[0].duration == pytest.approx(duration)
    assert_same_answers(answers, grounder.ground_many(features, QUESTIONS[:2], top_k=3, duration=duration))
    assert all(a.windows().max() <= duration + 1e-6 for a in answers)

    assert MeanRGB.calls - before == 2 * 20  # ground_video's extraction and extract_features's
    again = grounder.ground_video(video, QUESTIONS[:2], top_k=3, cache_dir=cache, progress=False)
    assert MeanRGB.calls - before == 2 * 20  # read from the cache
    assert_same_answers(again, answers)
    # another file content under the same name is extracted anew
    write_video(tmp_path / "kitchen.mkv", COLOURS[::-1], 10)
    grounder.ground_video(video, QUESTIONS[:1], cache_dir=cache, progress=False)
    assert MeanRGB.calls - before == 3 * 20


def test_cache_key_changes_with_backbone_and_grid(tmp_path):
    video = write_video(tmp_path / "v.mkv", COLOURS, 10)
    grid = FeatureGrid(FPS, STRIDE, FRAMES)
    keys = {cache_key(video, make_video_backbone("mean_rgb"), grid),
            cache_key(video, make_video_backbone("thumbnail", size=4), grid),
            cache_key(video, make_video_backbone("thumbnail", size=8), grid),
            cache_key(video, make_video_backbone("mean_rgb"), FeatureGrid(FPS, 4, FRAMES))}
    assert len(keys) == 4


def test_video_needs_the_training_backbone():
    with pytest.raises(ConfigError, match="dataset.video_backbone"):
        video_grounder().ground_video("any.mp4", QUESTIONS[:1])
    with pytest.raises(ConfigError, match="'thumbnail' gives 192-d features.*input_vid_dim 3"):
        video_grounder(video_backbone=make_video_backbone("thumbnail"))


def test_thumbnail_is_the_window_mean_colour_layout():
    import torch

    windows = torch.zeros(1, 2, 2, 2, 3, dtype=torch.uint8)
    windows[0, 0, 0, 1] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # frame 0, pixel (0, 1) red
    features = make_video_backbone("thumbnail", size=2).encode(windows)
    # channel-major: R of the 4 pixels, then G, then B; the red pixel is lit in one of two frames
    np.testing.assert_allclose(features[0].numpy(), [-1, 0, -1, -1] + [-1] * 8, atol=1e-6)


def test_command_line_grounds_a_video(tmp_path, monkeypatch, capsys):
    import libs.predict
    from tools.ground import main

    monkeypatch.setattr(libs.predict, "make_text_encoder", lambda name, **kw: HashEncoder())
    video = write_video(tmp_path / "walk.mkv", COLOURS, 10)
    config, checkpoint = write_run(tmp_path, toy_model(input_vid_dim=3), text_encoder="minilm")
    overrides = ["--opt", "dataset.video_backbone=mean_rgb", "dataset.input_vid_dim=3",
                 f"dataset.default_fps={FPS}", f"dataset.feat_stride={STRIDE}", f"dataset.num_frames={FRAMES}"]
    args = [config, checkpoint, "--video", video, "--query", QUESTIONS[0], "--top-k", "2", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args + overrides) == 0
    assert "clip walk (10.0 s)" in capsys.readouterr().out
    assert main(args + ["--clip", "x"] + overrides) == 2
    assert "either --video or --clip" in capsys.readouterr().err
    assert main(args[:2] + ["--video", str(tmp_path / "gone.mp4"), "--query", "where?", "--device", "cpu"]
                + overrides) == 2
    assert "gone.mp4: no such video file" in capsys.readouterr().err
