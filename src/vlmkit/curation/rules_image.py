"""Unimodal image rules: decode failure, minimum side, aspect ratio, near-uniform images.

Every measurement is taken on the decoded image with its EXIF orientation applied
(`vlmkit.curation.rules.image_of`), so a portrait photo stored landscape with an orientation tag
is measured as the portrait it displays as.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmkit.curation.rules import Bounded, RowError, RuleBase, check_range, image_of, register


@dataclass(kw_only=True, frozen=True)
class DecodeConfig:
    pass


@register("image_decode", DecodeConfig, "the image exists and decodes")
class ImageDecode(RuleBase):
    """Score: "" if the image decodes, else the reason (missing_image, undecodable_image). With
    this rule first, bad images are *removed by a rule* instead of counted as unreadable rows."""

    def score(self, row: dict) -> str:
        try:
            image_of(row)
        except RowError as e:
            return e.reason
        return ""

    def keep(self, value: str) -> bool:
        return value == ""

    def summary(self, value: str) -> str:
        return value or "ok"


@dataclass(kw_only=True, frozen=True)
class MinSideConfig:
    min_side: int = 32  # pixels, after EXIF orientation

    def __post_init__(self) -> None:
        check_range("image_size.min_side", self.min_side, 1)


@register("image_size", MinSideConfig, "the image's shorter side >= min_side pixels")
class ImageMinSide(Bounded):
    measures, bound, needs_image = "shorter side (px)", "min_side", True

    def score(self, row: dict) -> int:
        return min(image_of(row).size)


@dataclass(kw_only=True, frozen=True)
class AspectConfig:
    max_ratio: float = 3.0  # longer side / shorter side

    def __post_init__(self) -> None:
        check_range("aspect_ratio.max_ratio", self.max_ratio, 1.0)


@register("aspect_ratio", AspectConfig, "longer side / shorter side <= max_ratio")
class AspectRatio(Bounded):
    measures, bound, at_least, needs_image = "longer / shorter side", "max_ratio", False, True

    def score(self, row: dict) -> float:
        w, h = image_of(row).size
        return max(w, h) / min(w, h)


@dataclass(kw_only=True, frozen=True)
class UniformConfig:
    min_std: float = 4.0  # standard deviation of grey levels (0-255) below which an image is blank
    size: int = 64  # measured on a copy at most this side (fast; blank stays blank)

    def __post_init__(self) -> None:
        check_range("image_uniform.min_std", self.min_std, 0.0, 255.0)
        check_range("image_uniform.size", self.size, 8)


@register("image_uniform", UniformConfig, "pixel standard deviation >= min_std (not blank)")
class ImageUniform(Bounded):
    measures, bound, needs_image = "grey-level std", "min_std", True

    def score(self, row: dict) -> float:
        image = image_of(row).convert("L")
        image.thumbnail((self.config.size, self.config.size))  # deterministic (PIL's reducing filter)
        return float(np.asarray(image, dtype=np.float64).std())
