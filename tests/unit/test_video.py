"""Frame sampling from folders, animated images, frame lists and (optional) video backends."""

import sys

import numpy as np
import pytest
from PIL import Image, features

from vlmkit.data.video import natural_key, sample_frames, sample_indices
from vlmkit.errors import ConfigError, ImageError


def _frame(i: int, size=(24, 16)) -> Image.Image:
    """Solid frame whose grey level encodes its index (multiples of 8 survive GIF palettes)."""
    return Image.new("RGB", size, (8 * i, 8 * i, 8 * i))


def _index(im: Image.Image) -> int:
    value = int(np.asarray(im)[..., 0].mean().round())
    assert value % 8 == 0, value
    return value // 8


@pytest.mark.parametrize(
    ("n", "max_frames", "stride", "expected"),
    [
        (10, 16, None, list(range(10))),  # short clip: every frame, no padding
        (32, 16, None, list(range(0, 32, 2))),
        (100, 16, None, list(range(0, 99, 7))),  # ceil(100/16) = 7 -> 15 frames
        (30, 16, 5, [0, 5, 10, 15, 20, 25]),
        (30, 4, 1, [0, 1, 2, 3]),
        (0, 16, None, []),
        (1, 1, None, [0]),
    ],
)
def test_sample_indices(n, max_frames, stride, expected):
    assert sample_indices(n, max_frames, stride) == expected


@pytest.mark.parametrize(("max_frames", "stride"), [(0, None), (16, 0), (2.5, None), (4, -1)])
def test_sample_indices_rejects_bad_arguments(max_frames, stride):
    with pytest.raises(ConfigError):
        sample_indices(10, max_frames, stride)


def test_sampled_indices_are_evenly_spread_and_bounded():
    for n in range(1, 200):
        for max_frames in (1, 3, 8, 16):
            idx = sample_indices(n, max_frames)
            assert 1 <= len(idx) <= max_frames and idx[0] == 0 and idx[-1] < n
            steps = set(np.diff(idx).tolist())
            assert len(steps) <= 1  # fixed stride
            # The stride is the smallest that fits: one less would exceed max_frames.
            if steps and (s := steps.pop()) > 1:
                assert len(range(0, n, s - 1)) > max_frames


def test_natural_sort():
    names = ["f10.png", "f2.png", "F1.png", "f1b.png", "f01.png", "g.png"]
    # Equal keys ("F1" vs "f01") fall back to the raw name, so the order is total.
    expected = ["F1.png", "f01.png", "f1b.png", "f2.png", "f10.png", "g.png"]
    assert sorted(names, key=natural_key) == expected


def test_gif_frames(tmp_path):
    path = tmp_path / "clip.gif"
    frames = [_frame(i) for i in range(30)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0)
    got = sample_frames(path)
    assert [_index(f) for f in got] == list(range(0, 30, 2))
    assert all(f.mode == "RGB" and f.size == (24, 16) for f in got)
    strided = sample_frames(path, max_frames=16, stride=5)
    assert [_index(f) for f in strided] == [0, 5, 10, 15, 20, 25]
    assert [_index(f) for f in sample_frames(path, max_frames=3, stride=1)] == [0, 1, 2]


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_frames(tmp_path):
    path = tmp_path / "clip.webp"
    frames = [_frame(i) for i in range(6)]
    frames[0].save(path, save_all=True, append_images=frames[1:], lossless=True, duration=40)
    assert [_index(f) for f in sample_frames(path, max_frames=3)] == [0, 2, 4]


def test_still_image_is_one_frame(tmp_path):
    path = tmp_path / "still.png"
    _frame(3).save(path)
    assert [_index(f) for f in sample_frames(path)] == [3]


def test_frame_folder_natural_order(tmp_path):
    for i in range(1, 13):
        _frame(i).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    _frame(31).save(tmp_path / ".hidden.png")
    got = sample_frames(tmp_path, max_frames=4)  # stride ceil(12/4) = 3
    assert [_index(f) for f in got] == [1, 4, 7, 10]
    assert [_index(f) for f in sample_frames(tmp_path, max_frames=16)] == list(range(1, 13))


def test_list_of_images_source():
    frames = [_frame(i).convert("L") for i in range(5)]
    got = sample_frames(frames, max_frames=2)
    assert [_index(f) for f in got] == [0, 3] and all(f.mode == "RGB" for f in got)


def test_missing_empty_and_corrupt_sources(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        sample_frames(tmp_path / "nope.gif")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no image frames"):
        sample_frames(empty)
    bad = tmp_path / "bad.gif"
    bad.write_bytes(b"GIF89a garbage")
    with pytest.raises(ImageError):
        sample_frames(bad)


def test_video_without_backend_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    # None in sys.modules makes `import av` / `import cv2` raise ImportError.
    monkeypatch.setitem(sys.modules, "av", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImageError, match=r"install PyAV .* or OpenCV") as info:
        sample_frames(path)
    assert "\n" not in str(info.value)
