"""Drawing boxes, labels and masks."""

import numpy as np
import pytest
from PIL import Image

from vlmkit.errors import ConfigError, ImageError
from vlmkit.tasks.draw import MASK_ALPHA, draw_results, label_color
from vlmkit.tasks.parsing import Box

BG = (0, 0, 0)


def _black(w, h):
    return Image.new("RGB", (w, h), BG)


def test_label_colours_are_stable_and_distinct():
    assert label_color("cat") == label_color("cat") == (label_color("cat"))
    colours = {label_color(name) for name in ("cat", "dog", "car", "person", "tree", "cup")}
    assert len(colours) == 6
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)


def test_boxes_drawn_inside_regions_and_background_elsewhere():
    img = _black(200, 120)
    boxes = [Box("cat", 20, 40, 90, 100), Box("dog", 120, 30, 180, 110)]
    out = draw_results(img, boxes)
    assert out.size == (200, 120) and out.mode == "RGB"
    arr = np.asarray(out)
    for b in boxes:
        color = label_color(b.label)
        # Left/bottom outline carries the label colour; the box interior stays background.
        assert tuple(arr[int(b.y1) + 15, int(b.x1)]) == color
        assert tuple(arr[int(b.y2), int(b.x1) + 15]) == color
        assert tuple(arr[int(b.y2) - 5, int(b.x2) - 5]) == BG
    assert tuple(arr[115, 5]) == BG  # far from any box
    assert np.asarray(img).max() == 0  # the caller's image is not modified


def test_masks_are_translucent_and_clipped_to_their_pixels():
    img = Image.new("RGB", (64, 48), (100, 100, 100))
    mask = np.zeros((48, 64), bool)
    mask[20:40, 10:30] = True
    box = Box("blob", 8, 18, 32, 42)
    arr = np.asarray(draw_results(img, [box], masks=[mask]))
    expected = np.round(100 * (1 - MASK_ALPHA) + np.array(label_color("blob")) * MASK_ALPHA)
    np.testing.assert_array_equal(arr[30, 20], expected)  # inside mask, away from outline/label
    assert tuple(arr[5, 60]) == (100, 100, 100)  # outside


def test_mask_count_and_shape_are_checked():
    img = _black(10, 10)
    with pytest.raises(ConfigError):
        draw_results(img, [Box("a", 0, 0, 5, 5)], masks=[])
    with pytest.raises(ConfigError):
        draw_results(img, [Box("a", 0, 0, 5, 5)], masks=[np.zeros((5, 5), bool)])
    # None entries mean "no mask for this box".
    draw_results(img, [Box("a", 0, 0, 5, 5)], masks=[None])


def test_tiny_image_and_out_of_bounds_boxes():
    out = draw_results(_black(32, 32), [Box("person", -5, 3, 40, 30), Box("x", 10, 10, 10, 10)])
    arr = np.asarray(out)
    assert out.size == (32, 32)
    assert (arr.reshape(-1, 3) != 0).any(axis=1).sum() > 20
    assert tuple(arr[20, 0]) == label_color("person")  # left edge clipped onto column 0


def test_huge_image_scales_line_and_label():
    img = _black(4000, 3000)
    box = Box("elephant", 1000, 1000, 3000, 2500, score=0.87)
    arr = np.asarray(draw_results(img, [box]))
    color = label_color("elephant")
    # Outline is several pixels thick and the label background sits above the box, tall enough
    # to be readable at this size (font ~ short side / 32 = 94 px).
    assert all(tuple(arr[1500, 1000 + d]) == color for d in range(8))
    assert tuple(arr[1000 - 60, 1002]) == color
    assert tuple(arr[1800, 2000]) == BG


def test_writes_png_and_accepts_path_input(tmp_path):
    src = tmp_path / "in.jpg"
    _black(50, 40).save(src)
    out_path = tmp_path / "out.png"
    out = draw_results(src, [Box("a", 5, 5, 30, 30)], out_path=out_path)
    with Image.open(out_path) as written:
        assert written.format == "PNG" and written.size == (50, 40)
        np.testing.assert_array_equal(np.asarray(written.convert("RGB")), np.asarray(out))


def test_io_errors_are_image_errors(tmp_path):
    with pytest.raises(ImageError):
        draw_results(tmp_path / "missing.png", [])
    with pytest.raises(ImageError):
        draw_results(_black(8, 8), [], out_path=tmp_path / "no_dir" / "out.png")
