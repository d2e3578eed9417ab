"""Image loading (modes, EXIF, errors) and preprocessing against transformers' SigLIP processor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.image import (
    FAST_MAX_LEVEL_DIFF,
    FAST_MEAN_LEVEL_DIFF,
    fast_tolerance,
    load_image,
    preprocess_images,
    preprocess_images_fast,
)
from vlmkit.errors import ImageError

transformers = pytest.importorskip("transformers")
from transformers.image_transforms import convert_to_rgb as hf_convert_to_rgb  # noqa: E402


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _hf_siglip(size, **kwargs):
    from transformers import SiglipImageProcessorPil

    height, width = (size, size) if isinstance(size, int) else size
    return SiglipImageProcessorPil(size={"height": height, "width": width}, **kwargs)


# --- modes -------------------------------------------------------------------------------------


def _mode_image(mode: str, rng_image) -> Image.Image:
    if mode == "P+transparency":
        image = rng_image(17, 23).convert("P")
        image.info["transparency"] = 5  # palette index 5 is see-through
        return image
    if mode == "RGB+tRNS":
        image = rng_image(17, 23)
        image.info["transparency"] = tuple(int(v) for v in np.array(image)[0, 0])
        return image
    if mode == "I;16":
        values = np.random.default_rng(1).integers(0, 1200, (17, 23), dtype=np.uint16)
        return Image.fromarray(values)
    if mode in ("RGBA", "LA"):
        return rng_image(17, 23, mode)
    return rng_image(17, 23).convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "P", "P+transparency", "RGBA", "RGB+tRNS", "CMYK",
                                  "I;16", "I", "F", "1", "PA", "YCbCr", "HSV"])
def test_modes_convert_like_transformers(mode, rng_image):
    image = _mode_image(mode, rng_image)
    ours = load_image(image)
    assert ours.mode == "RGB" and ours.size == image.size
    np.testing.assert_array_equal(np.array(ours), hf_convert_to_rgb(image, return_numpy=True))


def test_transparency_is_composited_on_white():
    pixels = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    rgb = np.array(load_image(Image.fromarray(pixels, mode="RGBA")))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [10, 20, 30]
    assert 120 <= rgb[0, 2, 0] <= 135  # half-transparent black over white is mid grey


@pytest.mark.parametrize("shape", [(9, 7), (9, 7, 1), (9, 7, 3), (9, 7, 4)])
def test_arrays_convert_like_transformers(shape):
    array = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ours = np.array(load_image(array))
    assert ours.shape == (9, 7, 3)
    if len(shape) == 3:  # transformers' numpy branch expects a channel axis
        np.testing.assert_array_equal(ours, hf_convert_to_rgb(array, return_numpy=True))
    else:
        np.testing.assert_array_equal(ours, np.repeat(array[..., None], 3, axis=-1))


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8),
                                 np.zeros((2, 4, 4, 3), np.uint8)])
def test_bad_arrays_raise(bad):
    with pytest.raises(ImageError, match="image array"):
        load_image(bad)


def test_path_bytes_and_pil_agree(tmp_path, rng_image):
    image = rng_image(31, 40, "RGBA")
    path = tmp_path / "x.png"
    image.save(path)
    expected = np.array(load_image(image))
    for src in (path, str(path), path.read_bytes(), bytearray(path.read_bytes())):
        np.testing.assert_array_equal(np.array(load_image(src)), expected)


@pytest.mark.parametrize("orientation,transpose", [(3, Image.Transpose.ROTATE_180),
                                                   (6, Image.Transpose.ROTATE_270),
                                                   (8, Image.Transpose.ROTATE_90),
                                                   (2, Image.Transpose.FLIP_LEFT_RIGHT)])
def test_exif_orientation_is_applied(tmp_path, rng_image, orientation, transpose):
    image = rng_image(12, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    loaded = load_image(path)
    np.testing.assert_array_equal(np.array(loaded), np.array(image.transpose(transpose)))


# --- errors ------------------------------------------------------------------------------------


def _assert_one_line(exc: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "nope.jpg")
    _assert_one_line(exc, "nope.jpg", "does not exist")


def test_directory(tmp_path):
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path)
    _assert_one_line(exc, "directory")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "empty.png")
    _assert_one_line(exc, "empty.png", "empty")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a JPEG\n" * 20)
    with pytest.raises(ImageError) as exc:
        load_image(tmp_path / "notes.jpg")
    _assert_one_line(exc, "notes.jpg", "not an image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, rng_image, fmt):
    buf = io.BytesIO()
    rng_image(64, 64).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(ImageError) as exc:
        load_image(path)
    _assert_one_line(exc, f"cut.{fmt.lower()}", "truncated or corrupt")


def test_too_many_pixels(tmp_path, rng_image):
    path = tmp_path / "big.png"
    rng_image(50, 40).save(path)
    assert load_image(path, max_pixels=2000).size == (40, 50)
    with pytest.raises(ImageError) as exc:
        load_image(path, max_pixels=1999)
    _assert_one_line(exc, "big.png", "too large", "40x50")
    with pytest.raises(ImageError, match="too large"):
        load_image(np.zeros((50, 40, 3), np.uint8), max_pixels=100)


def test_pil_decompression_bomb_is_an_image_error(tmp_path, rng_image, monkeypatch):
    path = tmp_path / "bomb.png"
    rng_image(50, 40).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses > 2x this
    with pytest.raises(ImageError) as exc:
        load_image(path, max_pixels=10**9)
    _assert_one_line(exc, "bomb.png", "too large")


def test_unsupported_source_type():
    with pytest.raises(ImageError, match="cannot load an image from a dict"):
        load_image({"not": "an image"})


# --- preprocessing -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, (64, 96)])
def test_preprocess_matches_siglip_processor_exactly(rng_image, size):
    images = [rng_image(100, 150, seed=1), rng_image(300, 200, "RGBA", seed=2), rng_image(224, 224, "P"),
              rng_image(7, 5, "L", seed=3)]
    ours = preprocess_images(images, size)
    theirs = _hf_siglip(size)(images=images, return_tensors="pt")["pixel_values"]
    height, width = (size, size) if isinstance(size, int) else size
    assert ours.shape == (4, 3, height, width) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_preprocess_mean_std_and_resample(rng_image):
    images = [rng_image(90, 61, seed=4)]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ours = preprocess_images(images, 32, mean, std, resample="bilinear")
    theirs = _hf_siglip(32, image_mean=list(mean), image_std=list(std), resample=Image.BILINEAR)(
        images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    with pytest.raises(ValueError, match="resample"):
        preprocess_images(images, 32, resample="cubic")


# Shapes for which Pillow resizes horizontally first, like torch (checked in this env's Pillow).
_SAME_ORDER = [(300, 300), (100, 150), (50, 70), (120, 100), (224, 225), (500, 450), (80, 640)]


@pytest.mark.parametrize("height,width", _SAME_ORDER)
def test_fast_preprocess_within_max_tolerance(rng_image, height, width):
    image = rng_image(height, width, seed=height)
    reference, fast = preprocess_images([image], 224), preprocess_images_fast([image], 224)
    assert fast.shape == reference.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, atol=fast_tolerance(), rtol=0)
    assert FAST_MAX_LEVEL_DIFF / 255 / 0.5 < fast_tolerance() < 0.02


@pytest.mark.parametrize("height,width,size", [(382, 71, 224), (284, 221, 224), (645, 143, (224, 160)),
                                               (40, 30, 224), (900, 700, 224)])
def test_fast_preprocess_mean_error_any_shape(rng_image, height, width, size):
    image = rng_image(height, width, seed=width)
    reference, fast = preprocess_images([image], size), preprocess_images_fast([image], size)
    levels = (fast - reference).abs() * 255 * 0.5  # back to uint8 levels (std 0.5)
    assert levels.mean().item() < FAST_MEAN_LEVEL_DIFF


def test_fast_preprocess_tensor_input_matches_sources(rng_image):
    images = [rng_image(60, 90, seed=s) for s in range(3)]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    torch.testing.assert_close(preprocess_images_fast(batch, 32), preprocess_images_fast(images, 32),
                               atol=0, rtol=0)
    with pytest.raises(ImageError, match="uint8"):
        preprocess_images_fast(batch.float(), 32)
