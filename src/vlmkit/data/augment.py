"""Photometric augmentation for training images (`Augment`, `augment_image`).

Only label-preserving changes: a horizontal flip swaps "left"/"right" answers, mirrors every loc
box and mirrors rendered text, and a hue shift turns a "red" object orange, so neither is offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlmkit.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class Augment:
    """Photometric jitter; each factor is drawn from U(1 - x, 1 + x) per sample.

    Only label-preserving changes: no flip/crop (they would have to rewrite position answers,
    loc boxes and mirrored text) and no hue shift (it would change colour answers).
    """

    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.1
    noise: float = 0.0  # std of additive Gaussian noise, in uint8 levels

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"Augment.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.noise < 0:
            raise ConfigError(f"Augment.noise must be >= 0, got {self.noise}")


def augment_image(image: Image.Image, aug: Augment, rng: np.random.Generator) -> Image.Image:
    """Jittered copy of an RGB PIL image (same size, uint8 RGB)."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    b, c, s = (rng.uniform(1 - v, 1 + v) for v in (aug.brightness, aug.contrast, aug.saturation))
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # (H, W, 1) luma
    x = (x - gray) * s + gray
    if aug.noise > 0:
        x = x + rng.normal(0.0, aug.noise, size=x.shape)
    return Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8), "RGB")
