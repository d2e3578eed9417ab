"""Draw detection / segmentation results on an image.

Everything scales with the image (line width, font size, label padding) so the same call gives a
readable picture on a 32 px thumbnail and on a 4000 px photo. Colours are a stable function of
the label (CRC32 -> hue), so "cat" has the same colour in every image and every run.
"""

from __future__ import annotations

import colorsys
import functools
import os
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vlmkit.errors import ConfigError, ImageError
from vlmkit.tasks.parsing import Box

MASK_ALPHA = 0.45  # translucent enough to see the object under its mask


def label_color(label: str) -> tuple[int, int, int]:
    """Stable, saturated RGB colour for a label (same label -> same colour, across runs)."""
    h = zlib.crc32(label.encode("utf-8")) / 2**32
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans if installed, else Pillow's bundled scalable font, else its bitmap font."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or built without FreeType
        return ImageFont.load_default()


def _as_rgb(image: Image.Image | str | os.PathLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # always a copy: never draw on the caller's image
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot open image {os.fspath(image)}: {e}") from None


def _blend_masks(
    img: Image.Image, boxes: Sequence[Box], masks: Sequence[np.ndarray | None]
) -> Image.Image:
    if len(masks) != len(boxes):
        raise ConfigError(f"got {len(masks)} masks for {len(boxes)} boxes")
    arr = np.array(img)  # [H, W, 3] uint8 copy
    for box, mask in zip(boxes, masks):
        if mask is None:
            continue
        m = np.asarray(mask, dtype=bool)
        if m.shape != arr.shape[:2]:
            raise ConfigError(f"mask shape {m.shape} != image shape {arr.shape[:2]}")
        # Blend only the masked pixels in float: a 4000 px photo never gets a float copy.
        color = np.array(label_color(box.label), dtype=np.float32)
        blended = arr[m].astype(np.float32) * (1 - MASK_ALPHA) + color * MASK_ALPHA  # [P, 3]
        arr[m] = blended.round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _draw_label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color, font, pad: int, size
) -> None:
    """Label text on a filled box of the label colour, kept inside the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    w, h = size
    x = min(max(xy[0], 0), max(w - tw, 0))
    y = xy[1] - th if xy[1] - th >= 0 else xy[1]  # above the box, or inside if no room
    y = min(max(y, 0), max(h - th, 0))
    draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=color)
    # Dark text on light colours and vice versa (ITU-R BT.601 luma).
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


def draw_results(
    image: Image.Image | str | os.PathLike,
    boxes: Sequence[Box],
    masks: Sequence[np.ndarray | None] | None = None,
    out_path: str | os.PathLike | None = None,
) -> Image.Image:
    """Return a copy of `image` (RGB) with boxes, labels and translucent masks drawn on it.

    Args:
        image: PIL image or path; boxes: pixel coordinates of this image (`Box`).
        masks: optional, one bool [H, W] array (or None) per box.
        out_path: if given, also write the result there as PNG.
    Raises ImageError for an unreadable image or unwritable `out_path`; ConfigError for masks
    that do not match the boxes or the image size.
    """
    img = _as_rgb(image)
    if masks is not None:
        img = _blend_masks(img, boxes, masks)
    w, h = img.size
    short = min(w, h)
    line = max(1, round(short / 250))
    font = _font(max(9, round(short / 32)))
    pad = max(1, round(short / 300))
    draw = ImageDraw.Draw(img)
    for box in boxes:
        color = label_color(box.label)
        x1, x2 = sorted((box.x1, box.x2))
        y1, y2 = sorted((box.y1, box.y2))
        # Clip to the image: a partly-outside box still shows its visible edges.
        x1, x2 = (min(max(v, 0), w - 1) for v in (x1, x2))
        y1, y2 = (min(max(v, 0), h - 1) for v in (y1, y2))
        draw.rectangle([x1, y1, x2, y2], outline=color, width=line)
        text = box.label if box.score is None else f"{box.label} {box.score:.2f}"
        if text:
            _draw_label(draw, (x1, y1), text, color, font, pad, (w, h))
    if out_path is not None:
        try:
            img.save(out_path, format="PNG")
        except (OSError, ValueError) as e:
            raise ImageError(f"cannot write {os.fspath(out_path)}: {e}") from None
    return img
