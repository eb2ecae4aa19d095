"""Video files for tests, written with PyAV, and a user-style backbone that reads them simply."""
import numpy as np

from libs.video.backbones import VIDEO_BACKBONES, VideoBackbone


def write_video(path, colours, fps, size=(48, 32), codec="ffv1"):
    """One frame per entry of ``colours`` (an RGB triple each), at ``fps`` frames per second."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        for colour in colours:
            frame = np.empty((size[1], size[0], 3), np.uint8)
            frame[:] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


class MeanRGB(VideoBackbone):
    """A user's backbone: the mean colour of each window, in [0, 1]; counts the windows it encodes."""

    name, frame_size, dim = "mean_rgb", 8, 3
    calls = 0

    def encode(self, windows):
        MeanRGB.calls += windows.shape[0]
        return windows.float().mean(dim=(1, 2, 3)) / 255.0


if "mean_rgb" not in VIDEO_BACKBONES:
    VIDEO_BACKBONES.register("mean_rgb")(MeanRGB)
