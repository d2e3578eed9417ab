"""uint8 image operations shared by the processors, each identical to transformers' PIL backend.

Images travel as uint8 numpy arrays [H, W, 3] (RGB, from `load_image`) until the last step, so every
resize is PIL's own resize of a uint8 image - exactly what transformers' `PilBackend.resize` does for
uint8 input - and crops/pads are plain slicing. `to_pixel_values` then does transformers' arithmetic:

    x_uint8 -> float64 * rescale_factor -> float32 -> (x - mean) / std in float32

so pixel_values are bit-identical to transformers' (tests/parity/test_processors_typec.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vlmkit.data.image import ImageSource, load_image


@dataclass(kw_only=True, frozen=True)
class Normalization:
    """The rescale + normalise fields of an image processor config (transformers' names)."""

    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(do_rescale=bool(d.get("do_rescale", True)),
                   rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                   do_normalize=bool(d.get("do_normalize", True)),
                   image_mean=tuple(float(v) for v in d.get("image_mean", (0.5, 0.5, 0.5))),
                   image_std=tuple(float(v) for v in d.get("image_std", (0.5, 0.5, 0.5))))


def load_rgb(src: ImageSource) -> np.ndarray:
    """uint8 [H, W, 3] RGB array of `src` (EXIF applied, alpha onto white: transformers' convert_to_rgb)."""
    return np.asarray(load_image(src))


def resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """PIL resize of a uint8 [H, W, 3] array to (height, width); `resample` is a PIL filter id."""
    if image.shape[:2] == (height, width):
        return image  # PIL returns an identical copy for a no-op resize
    out = Image.fromarray(image).resize((width, height), resample=Image.Resampling(resample))
    return np.asarray(out)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop to (height, width); a side smaller than the crop is zero-padded first (centred,
    the extra pixel at the end), as transformers' `center_crop` does."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return image[top:top + height, left:left + width]
    new_h, new_w = max(height, h), max(width, w)
    canvas = np.zeros((new_h, new_w, image.shape[2]), dtype=image.dtype)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = image
    top, left = top + pad_top, left + pad_left
    return canvas[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(H, W) with the short side = `shortest_edge`, the long side floor-scaled (transformers' rule)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def to_pixel_values(image: np.ndarray, norm: Normalization) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W], rescaled and normalised with transformers' arithmetic."""
    chw = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    if norm.do_rescale:
        # float64 multiply then cast: a float32 multiply by 1/255 differs in the last bit for some values
        x = (chw.to(torch.float64) * norm.rescale_factor).to(torch.float32)
    else:
        x = chw.to(torch.float32)
    if norm.do_normalize:
        mean = torch.tensor(norm.image_mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(norm.image_std, dtype=torch.float32).reshape(-1, 1, 1)
        x = (x - mean) / std
    return x


def stack(tiles: Sequence[np.ndarray], norm: Normalization) -> torch.Tensor:
    """float32 [N, 3, H, W] of N equally sized uint8 tiles."""
    return torch.stack([to_pixel_values(t, norm) for t in tiles])
