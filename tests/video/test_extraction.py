"""Video in, features out: the grid rule on real encoded files (PyAV writes them), one-line errors
for bad files, resumable many-video extraction, the CLIP image backbone and the command line."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from libs.core.errors import ConfigError
from libs.datasets.feature_store import open_store
from libs.video.backbones import make_video_backbone
from libs.video.decode import VideoError, VideoWindows, probe
from libs.video.extract import extract_features, extract_to_store, sidecar_path
from libs.video.grid import FeatureGrid
from tests.conftest import ROOT
from tests.tiny_clip import tiny_openai_clip_state_dict
from tests.video_files import MeanRGB, write_video

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None,
                                reason="video extra not installed (pip install -e .[video])")

RED, BLUE = (255, 0, 0), (0, 0, 255)


def blue_fraction_by_rule(grid, index, file_fps, change_frame):
    """Share of feature ``index``'s samples that show a frame at or after ``change_frame``: at
    instant t the file shows frame floor(t * file_fps)."""
    shown = [int(np.floor(t * file_fps + 1e-6)) for t in grid.sample_times(index)]
    return np.mean([frame >= change_frame for frame in shown])


@pytest.mark.parametrize("file_fps, grid", [
    (25, FeatureGrid(30, 16, 16)),       # the reference's grid on a 25 fps file
    (30, FeatureGrid(30, 8, 16)),        # overlapping windows
    (24, FeatureGrid(10, 4.5, 3)),       # fractional stride, gaps between windows
    (60, FeatureGrid(15, 2, 4)),         # file faster than the grid
])
def test_features_follow_the_grid_rule(tmp_path, file_fps, grid):
    frames, change_frame = 4 * file_fps + 3, int(2.4 * file_fps)  # red until 2.4 s, then blue
    path = write_video(tmp_path / "v.mkv", [RED] * change_frame + [BLUE] * (frames - change_frame), file_fps)
    features, duration = extract_features(path, make_video_backbone("mean_rgb"), grid, batch_size=3)
    assert duration == pytest.approx(frames / file_fps, abs=1e-3)  # Matroska stamps milliseconds
    assert features.shape == (grid.num_features(duration), 3)
    expected = [blue_fraction_by_rule(grid, i, file_fps, change_frame) for i in range(len(features))]
    np.testing.assert_allclose(features[:, 2], expected, atol=0.02)   # blue channel
    np.testing.assert_allclose(features[:, 0], 1 - np.array(expected), atol=0.02)
    # the feature whose samples straddle 2.4 s changes colour there
    covering = [i for i in range(len(features)) if grid.sample_times(i)[0] < 2.4 <= grid.sample_times(i)[-1]]
    assert covering and all(0 < expected[i] < 1 for i in covering)
    assert grid.centre_seconds(0) == pytest.approx(grid.num_frames / 2 / grid.fps)


def test_grid_counts_whole_windows_only():
    grid = FeatureGrid(30, 16, 16)
    assert grid.num_features(480.0) == 900           # floor((14400 - 16) / 16) + 1
    assert grid.num_features(16 / 30) == 1 and grid.num_features(15.9 / 30) == 0
    assert FeatureGrid(30, 16.043, 16).num_features(480.0) == 897
    with pytest.raises(ConfigError, match="num_frames must be a whole number"):
        FeatureGrid(30, 16, 2.5)
    with pytest.raises(ConfigError, match="fps must be a positive number"):
        FeatureGrid(0, 16, 16)
    with pytest.raises(ConfigError, match="default_fps is not set"):
        FeatureGrid.from_config({"dataset": {"default_fps": None, "feat_stride": 16, "num_frames": 16}})


def test_batching_does_not_change_features(tmp_path):
    path = write_video(tmp_path / "v.mkv", [RED, BLUE, (0, 255, 0)] * 20, 30)
    grid = FeatureGrid(30, 4, 8)
    one, _ = extract_features(path, make_video_backbone("mean_rgb"), grid, batch_size=1)
    many, _ = extract_features(path, make_video_backbone("mean_rgb"), grid, batch_size=7)
    np.testing.assert_array_equal(one, many)


def test_frames_are_scaled_and_centre_cropped(tmp_path):
    path = write_video(tmp_path / "v.mkv", [RED] * 10, 10, size=(64, 32))
    windows = list(VideoWindows(path, FeatureGrid(10, 5, 5), size=16))
    assert [i for i, _ in windows] == [0, 1] and windows[0][1].shape == (5, 16, 16, 3)
    assert probe(path).width == 64 and probe(path).height == 32 and probe(path).fps == 10


def test_bad_files_get_one_line_naming_them(tmp_path):
    import av

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    good = write_video(tmp_path / "good.mp4", [RED] * 60 + [BLUE] * 60, 30, codec="mpeg4")
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(open(good, "rb").read()[: os.path.getsize(good) // 2])
    audio = tmp_path / "audio.m4a"
    with av.open(str(audio), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in list(stream.encode(frame)) + list(stream.encode()):
            container.mux(packet)
    short = write_video(tmp_path / "short.mkv", [RED] * 5, 30)
    grid = FeatureGrid(30, 16, 16)
    backbone = make_video_backbone("mean_rgb")
    for path, reason in [(empty, "empty"), (text, "cannot be read as a video"), (audio, "no video stream"),
                         (truncated, "truncated"), (short, "shorter than one feature window"),
                         (tmp_path / "absent.mp4", "no such video file")]:
        with pytest.raises(VideoError) as error:
            extract_features(str(path), backbone, grid)
        message = str(error.value)
        assert message.startswith(str(path)) and reason in message and "\n" not in message


def read_store(path):
    store = open_store(path)
    try:
        return {key: store[key] for key in store.keys()}
    finally:
        store.close()


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name, colour in [("a", RED), ("b", BLUE), ("c", (0, 255, 0))]:
        write_video(videos / f"{name}.mkv", [colour] * 40, 20)
    dst = str(tmp_path / "feats.h5")
    grid = FeatureGrid(20, 8, 8)
    backbone = make_video_backbone("mean_rgb")
    original = backbone.encode

    def dies_on_blue(windows):
        if windows[..., 2].float().mean() > 128:  # the second video
            raise Interrupt
        return original(windows)

    backbone.encode = dies_on_blue
    with pytest.raises(Interrupt):
        extract_to_store([str(videos)], dst, backbone, grid, progress=False)
    assert sorted(read_store(dst)) == ["a"]
    backbone.encode = original
    before = MeanRGB.calls
    summary = extract_to_store([str(videos)], dst, backbone, grid, progress=False)
    assert summary.already_present == ["a"] and summary.written == ["b", "c"]
    assert MeanRGB.calls - before == 2 * grid.num_features(2.0)  # b and c only
    stored = read_store(dst)
    assert sorted(stored) == ["a", "b", "c"]
    np.testing.assert_allclose(stored["a"], np.tile([1.0, 0, 0], (5, 1)), atol=0.02)
    record = json.load(open(sidecar_path(dst)))
    assert record["grid"] == {"fps": 20, "feat_stride": 8, "num_frames": 8} and record["dim"] == 3
    assert record["videos"]["c"]["num_features"] == 5 and record["videos"]["c"]["duration_s"] == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="feats.h5 holds features with grid"):
        extract_to_store([str(videos)], dst, backbone, FeatureGrid(20, 4, 8), progress=False)


def test_skip_bad_goes_on_and_without_it_the_run_stops(tmp_path):
    write_video(tmp_path / "a.mkv", [RED] * 40, 20)
    (tmp_path / "b.mp4").write_bytes(b"")
    write_video(tmp_path / "c.mkv", [BLUE] * 40, 20)
    grid, backbone = FeatureGrid(20, 8, 8), make_video_backbone("mean_rgb")
    dst = str(tmp_path / "f.h5")
    with pytest.raises(VideoError, match="b.mp4: the file is empty"):
        extract_to_store([str(tmp_path)], dst, backbone, grid, progress=False)
    summary = extract_to_store([str(tmp_path)], dst, backbone, grid, skip_bad=True, progress=False)
    assert summary.already_present == ["a"] and summary.written == ["c"]
    assert [path for path, _ in summary.failed] == [str(tmp_path / "b.mp4")]


def test_two_videos_with_one_id_are_refused(tmp_path):
    a, b = tmp_path / "x", tmp_path / "y"
    a.mkdir(), b.mkdir()
    write_video(a / "clip.mkv", [RED] * 20, 20)
    write_video(b / "clip.mkv", [RED] * 20, 20)
    with pytest.raises(ConfigError, match="two videos would get the id 'clip'"):
        extract_to_store([str(a), str(b)], str(tmp_path / "f.h5"), make_video_backbone("mean_rgb"),
                         FeatureGrid(20, 8, 8), progress=False)


def test_clip_backbone_averages_normalised_frame_embeddings(tmp_path):
    pytest.importorskip("transformers")
    from libs.datasets import openai_clip

    weights = str(tmp_path / "tiny_clip.pt")
    torch.save(tiny_openai_clip_state_dict(), weights)
    backbone = make_video_backbone("clip", weights_path=weights)
    assert backbone.frame_size == 32 and backbone.dim == 16
    windows = torch.randint(0, 256, (2, 3, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model = openai_clip.vision_model_from_openai(tiny_openai_clip_state_dict())
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (windows.reshape(6, 32, 32, 3).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        expected = model(pixel_values=pixels).image_embeds.view(2, 3, 16).mean(dim=1)
    torch.testing.assert_close(backbone.encode(windows), expected, atol=1e-5, rtol=0)
    assert backbone.identity().startswith("clip:") and len(backbone.identity()) == 5 + 64
    with pytest.raises(ConfigError, match="exactly one of"):
        make_video_backbone("clip")


def test_command_line_writes_the_store_and_reports_bad_videos(tmp_path):
    write_video(tmp_path / "a.mkv", [RED] * 40, 20)
    (tmp_path / "b.mp4").write_bytes(b"")
    dst = tmp_path / "f.h5"
    # mean_rgb is registered by tests/video_files.py only: run the tool inside this process
    sys.path.insert(0, ROOT)
    from feature_extraction import extract_video_features

    code = extract_video_features.main(["--videos", str(tmp_path), "--dst", str(dst), "--backbone", "mean_rgb",
                                        "--fps", "20", "--feat-stride", "8", "--num-frames", "8",
                                        "--skip-bad", "--no-progress"])
    assert code == 1 and dst.exists()
    code = extract_video_features.main(["--videos", str(tmp_path), "--dst", str(dst), "--backbone", "mean_rgb",
                                        "--fps", "20", "--num-frames", "8", "--no-progress"])
    assert code == 2  # --feat-stride missing: a user error


def test_command_line_help_runs_as_a_script():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "feature_extraction", "extract_video_features.py"),
                             "--help"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0 and "--skip-bad" in result.stdout
