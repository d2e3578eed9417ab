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
