"""`sample_video`: the sampled frames of a source as one Video with its sampled frame rate (the
source's rate over the stride), from an animated GIF's frame duration, a video container's rate
(OpenCV, when installed), and none for a folder of frames."""

import numpy as np
import pytest
from PIL import Image

from vlmkit.data.video import Video, sample_video
from vlmkit.errors import ImageError


def _gif(path, n: int, ms: int):
    frames = [Image.new("RGB", (24, 16), (8 * i, 0, 0)) for i in range(n)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms, loop=0)
    return path


def test_gif_rate_over_the_stride(tmp_path):
    """10 frames of 100 ms (10 fps), at most 5 frames -> every 2nd frame -> 5 fps."""
    clip = sample_video(_gif(tmp_path / "a.gif", 10, 100), max_frames=5)
    assert isinstance(clip, Video) and len(clip.frames) == 5 and clip.fps == pytest.approx(5.0)
    assert sample_video(tmp_path / "a.gif", max_frames=16, stride=3).fps == pytest.approx(10 / 3)


def test_folder_has_no_rate(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"f{i}.png")
    clip = sample_video(tmp_path)
    assert len(clip.frames) == 3 and clip.fps is None


def test_video_file_rate(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 8, (32, 24))
    for i in range(12):
        writer.write(np.full((24, 32, 3), 20 * i, np.uint8))
    writer.release()
    clip = sample_video(path, max_frames=4)  # every 3rd of 12 frames at 8 fps
    assert len(clip.frames) == 4 and clip.fps == pytest.approx(8 / 3)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ImageError, match="no image frames"):
        sample_video(tmp_path)


def test_a_frame_rate_asks_for_duration_times_rate_frames(tmp_path):
    """A 3 s GIF of 30 frames (10 fps): 2 fps asks for 6 frames (stride 5), 0.5 fps for 1.5, raised to
    transformers' minimum of 4 (stride 8: 4 frames); the cap (max_frames) still holds; with temporal
    patches of 2 the count is rounded down to a multiple (3 fps: 9 -> 8, stride 4 -> 8 frames)."""
    path = _gif(tmp_path / "a.gif", 30, 100)
    for fps, most, multiple, frames in ((2.0, 16, 1, 6), (0.5, 16, 1, 4), (2.0, 4, 1, 4), (3.0, 16, 2, 8)):
        clip = sample_video(path, max_frames=most, fps=fps, multiple=multiple)
        assert len(clip.frames) == frames, (fps, most, multiple)
        assert clip.fps == pytest.approx(10 / -(-30 // frames))


def test_a_frame_rate_needs_a_rate_and_no_stride(tmp_path):
    from vlmkit.errors import ConfigError

    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"f{i}.png")
    with pytest.raises(ImageError, match=r"cannot sample .* at 2.0 fps: it has no frame rate \(a folder of frames"):
        sample_video(tmp_path, fps=2.0)
    with pytest.raises(ImageError, match=r"at 2.0 fps: video source not found: .*gone.gif"):
        sample_video(tmp_path / "gone.gif", fps=2.0)
    with pytest.raises(ConfigError, match="a frame rate and a frame stride are two ways"):
        sample_video(_gif(tmp_path / "a.gif", 4, 100), fps=2.0, stride=2)
