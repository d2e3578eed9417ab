"""Image loading and SigLIP/PaliGemma preprocessing.

`load_image` turns a path, bytes, PIL image or uint8 array into an RGB PIL image: EXIF orientation
applied, transparency composited onto white, every other mode converted with PIL - the same RGB that
`transformers`' image processors produce (their `convert_to_rgb`). Bad input raises `ImageError`.

`preprocess_images` is the reference pipeline, identical bit for bit to `transformers`'
SiglipImageProcessor (its PIL backend, the one used when torchvision is absent):

    PIL resize to (H, W) (bicubic by default) -> uint8 -> float64 * (1/255) -> float32
    -> (x - mean) / std in float32

`preprocess_images_fast` resizes uint8 torch tensors (antialiased, PIL's a = -0.5 cubic kernel, the
same two-pass uint8 scheme) and fuses rescale + normalise into one multiply-add. Tolerance, measured
against `preprocess_images` (tests/unit/test_image.py):

* where Pillow runs its horizontal pass first (Pillow's classic order; torch always does), every
  pixel is within `FAST_MAX_LEVEL_DIFF` = 2 uint8 levels, i.e. `fast_tolerance(std)` = 2/255/min(std)
  (0.0157 for std 0.5) after normalisation;
* newer Pillow builds (this env's 13.x) pick the vertical pass first for some shapes (e.g. tall images
  shrunk to a square). Cubic overshoot is then clipped at a different stage, so pixels beside
  high-contrast edges can differ by up to ~20 levels; the mean stays below `FAST_MEAN_LEVEL_DIFF`
  = 0.5 level (measured: 0.06 on photo-like images, 0.38 worst case on white noise).
"""

from __future__ import annotations

import io
import stat
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmkit.errors import ImageError

ImageSource = Union[str, Path, bytes, Image.Image, np.ndarray]

DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_FILE_BYTES = 256 << 20  # no photo needs more; a bigger file is read whole otherwise
FAST_MAX_LEVEL_DIFF = 2  # worst |torch uint8 resize - PIL| in uint8 levels, same pass order
FAST_MEAN_LEVEL_DIFF = 0.5  # bound on the mean |difference| in uint8 levels, any shape

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of `image`, exactly as transformers' `convert_to_rgb` makes it.

    Images with an alpha band (RGBA, LA, PA, ...) or a transparency key (P/L/RGB with tRNS) are
    composited onto opaque white; all other modes use PIL's own conversion. Note that PIL clips
    16-bit and float modes (I;16, I, F) to 0..255 rather than rescaling - kept for parity.
    """
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """uint8 HxW or HxWxC (C = 1, 3, 4) array -> RGB image, alpha blended onto white like transformers."""
    if array.dtype != np.uint8:
        raise ImageError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ImageError(f"image array must be HxW or HxWxC with C in 1, 3, 4; got shape {array.shape}")
    if array.shape[-1] == 4:
        # transformers' numpy branch: round(a * rgb + (1 - a) * 255) with a = alpha / 255 (float64)
        alpha = array[..., 3:4] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def _check_pixels(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(f"image {name} is too large: {width}x{height} = {width * height} pixels "
                         f"> max_pixels={max_pixels}")
    if width == 0 or height == 0:
        raise ImageError(f"image {name} is empty ({width}x{height})")


def _open_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes; every failure becomes a one-line ImageError naming `name`."""
    if not data:
        raise ImageError(f"image file {name} is empty")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice that; make it an error (one line).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
        _check_pixels(image.width, image.height, name, max_pixels)
        image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image {name} is too large (PIL decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image or is in an unsupported format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        cause = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise ImageError(f"image {name} is truncated or corrupt ({cause})") from None
    return image


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes; its size is checked first, so a multi-GB file is refused before any read."""
    try:
        st = path.stat()
        size = st.st_size
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"image path {path} is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: no size to check, reads never end
            raise ImageError(f"image path {path} is not a regular file")
        if size > max_bytes:
            raise ImageError(f"image file {path} is too large: {size:,} bytes > max_bytes={max_bytes:,}")
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image file {path} does not exist") from None
    except OSError as exc:
        raise ImageError(f"cannot read image file {path} ({exc.strerror or type(exc).__name__})") from None


def load_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Image.Image:
    """Load `src` as an RGB PIL image (EXIF orientation applied, alpha composited onto white).

    Args:
        src: a file path, encoded bytes (JPEG, PNG, WebP, ...), a PIL image, or a uint8 numpy
            array HxW / HxWxC with C in (1, 3, 4).
        max_pixels: refuse images with more pixels than this (decompression bombs, huge scans).
        max_bytes: refuse image files larger than this, checked before reading.
    Raises:
        ImageError: missing/empty/unreadable file, not an image, unsupported format, truncated or
            corrupt data, too many pixels, or an array of the wrong dtype/shape.
    """
    if isinstance(src, (str, Path)):
        image = _open_bytes(_read_file(Path(src), max_bytes), str(src), max_pixels)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        image = _open_bytes(bytes(src), f"<{len(src)} bytes>", max_pixels)
    elif isinstance(src, Image.Image):
        _check_pixels(src.width, src.height, f"<PIL {src.mode} image>", max_pixels)
        image = src
    elif isinstance(src, np.ndarray):
        if src.ndim >= 2:
            _check_pixels(src.shape[1], src.shape[0], f"<array {src.shape}>", max_pixels)
        return _array_to_rgb(src)  # arrays carry no EXIF
    else:
        raise ImageError(f"cannot load an image from a {type(src).__name__} "
                         "(expected a path, bytes, PIL image or uint8 array)")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - malformed EXIF is common; orientation is advisory, pixels are fine
        pass
    return to_rgb(image)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return int(height), int(width)


def _mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (3, 1, 1) tensors, broadcastable over [B, 3, H, W]."""
    m = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)
    return m, s


def preprocess_images(images: Sequence[ImageSource], size: int | tuple[int, int] = 224,
                      mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                      resample: str = "bicubic") -> torch.Tensor:
    """Reference SigLIP preprocessing, identical to transformers' SiglipImageProcessor(Pil).

    Args:
        images: B image sources (see `load_image`).
        size: output side (square) or (height, width); the aspect ratio is not kept, as in SigLIP.
        mean, std: per-channel normalisation applied after rescaling to [0, 1].
        resample: PIL filter name: bicubic (SigLIP/PaliGemma), bilinear, lanczos, nearest, box, hamming.
    Returns:
        float32 tensor [B, 3, H, W].
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    height, width = _size_hw(size)
    m, s = _mean_std(mean, std)
    out = torch.empty(len(images), 3, height, width, dtype=torch.float32)
    for b, src in enumerate(images):
        resized = load_image(src).resize((width, height), resample=_RESAMPLE[resample])
        pixels = torch.from_numpy(np.array(resized)).permute(2, 0, 1)  # HWC -> [3, H, W] uint8
        # transformers rescales in float64, then casts; a float32 multiply by 1/255 would differ in the
        # last bit for 126 of the 256 values, so follow it exactly.
        scaled = (pixels.to(torch.float64) * (1 / 255)).to(torch.float32)
        out[b] = (scaled - m) / s
    return out


def fast_tolerance(std: Sequence[float] = (0.5, 0.5, 0.5)) -> float:
    """Max abs difference of `preprocess_images_fast` from the reference when the pass orders agree."""
    return FAST_MAX_LEVEL_DIFF / 255 / min(std) + 1e-6  # + float32 rounding of the fused affine


def _resize_uint8(pixels: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """[B, 3, h, w] uint8 -> [B, 3, H, W] uint8, antialiased like PIL when downscaling."""
    if pixels.shape[-2:] == (height, width):
        return pixels
    return torch.nn.functional.interpolate(pixels, size=(height, width), mode=mode,
                                           antialias=True, align_corners=False)


def preprocess_images_fast(images: Sequence[ImageSource] | torch.Tensor,
                           size: int | tuple[int, int] = 224,
                           mean: Sequence[float] = (0.5, 0.5, 0.5),
                           std: Sequence[float] = (0.5, 0.5, 0.5),
                           resample: str = "bicubic") -> torch.Tensor:
    """Fast SigLIP preprocessing on uint8 tensors; within `fast_tolerance(std)` of the reference.

    Args:
        images: B image sources (see `load_image`), or an RGB uint8 tensor [B, 3, h, w] / [3, h, w]
            (already decoded; resized as one batch, on its device).
        size, mean, std: as in `preprocess_images`.
        resample: "bicubic" or "bilinear" (the filters torch resizes uint8 with).
    Returns:
        float32 tensor [B, 3, H, W] on the input tensor's device (CPU for image sources).
    """
    if resample not in ("bicubic", "bilinear"):
        raise ValueError(f"fast preprocessing supports bicubic or bilinear, got {resample!r}")
    height, width = _size_hw(size)
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.shape[-3] != 3 or images.dim() not in (3, 4):
            raise ImageError(f"image tensor must be uint8 [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        batch = _resize_uint8(images.reshape(-1, *images.shape[-3:]), height, width, resample)
    else:
        resized = []
        for src in images:
            hwc = torch.from_numpy(np.array(load_image(src)))  # [h, w, 3] uint8
            resized.append(_resize_uint8(hwc.permute(2, 0, 1)[None], height, width, resample))
        batch = torch.cat(resized) if resized else torch.empty(0, 3, height, width, dtype=torch.uint8)
    m, s = (t.to(batch.device) for t in _mean_std(mean, std))
    # (x / 255 - m) / s == x * (1 / (255 s)) - m / s: one fused multiply-add per pixel.
    return torch.addcmul(-m / s, batch.to(torch.float32), 1 / (255 * s))
