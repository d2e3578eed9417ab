"""DeepSeek-VL processor: aspect-keeping resize, pad to a square with the mean colour.

Image (transformers' DeepseekVLImageProcessor, PIL backend), target side S = size.height:

    resize so the longest side is S: each side round(side * S / max(h, w)) (Python's round, ties to
    even), at least min_size -> pad to S x S centred, filled with int(mean * 255) per channel
    -> rescale -> normalise -> [3, S, S]

Text (DeepseekVLProcessor): each image placeholder (`<image_placeholder>` in deepseek-vl, the
tokenizer's "image_token") becomes num_image_tokens copies of itself (576 for 384 px).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.processors import pixels
from vlmkit.data.processors.common import TypeCProcessor, read_processor_files, size_field
from vlmkit.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class DeepseekVLProcessorConfig:
    """DeepseekVLImageProcessor + DeepseekVLProcessor fields."""

    size: int
    min_size: int = 14
    do_resize: bool = True
    do_pad: bool = True
    resample: int = 3  # PIL bicubic
    norm: pixels.Normalization = pixels.Normalization()
    num_image_tokens: int = 576
    image_token: str = "<image_placeholder>"

    @classmethod
    def from_folder(cls, folder: str | Path) -> "DeepseekVLProcessorConfig":
        image, proc = read_processor_files(folder)
        size = size_field(image, "size", f"{folder} image processor", "height", "width")
        if size["height"] != size["width"]:
            raise ConfigError(f"{folder}: DeepSeek-VL needs a square size, got {size}")
        tok_path = Path(folder) / "tokenizer_config.json"
        extra = json.loads(tok_path.read_text(encoding="utf-8")).get("extra_special_tokens", {}) \
            if tok_path.is_file() else {}
        return cls(size=size["height"], min_size=int(image.get("min_size", 14)),
                   do_resize=bool(image.get("do_resize", True)), do_pad=bool(image.get("do_pad", True)),
                   resample=int(image.get("resample", 3)), norm=pixels.Normalization.from_dict(image),
                   num_image_tokens=int(proc.get("num_image_tokens", 576)),
                   image_token=(extra if isinstance(extra, dict) else {}).get("image_token", "<image_placeholder>"))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """uint8 [h, w, 3] -> the uint8 model input (resize + pad to a square)."""
        if self.do_resize:
            h, w = image.shape[:2]
            scale = self.size / max(h, w)
            image = pixels.resize(image, max(round(h * scale), self.min_size), max(round(w * scale), self.min_size),
                                  self.resample)
        h, w = image.shape[:2]
        if not self.do_pad or h == w:
            return image
        side = max(h, w)
        canvas = np.empty((side, side, 3), dtype=np.uint8)
        canvas[:] = [int(m * 255) for m in self.norm.image_mean]  # the mean colour, truncated
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = image
        return canvas


class DeepseekVLProcessor(TypeCProcessor):
    """(prompts with image placeholders, images) -> DeepSeek-VL inputs; pixel_values float32 [N, 3, S, S]."""

    config_class = DeepseekVLProcessorConfig

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """float32 [N, 3, S, S] for N image sources."""
        return pixels.stack([self.config.prepare(pixels.load_rgb(src)) for src in images], self.config.norm)

    def encode_images(self, groups):
        values = self.pixel_values([img for g in groups for img in g])
        return {"pixel_values": values}, [self.placeholder * self.config.num_image_tokens] * values.shape[0]


def build_processor(folder: str | Path, tokenizer, cfg) -> DeepseekVLProcessor:
    """The deepseek_vl family's processor builder (named by its registry record): the folder's own
    processor files and tokenizer.json, checked against the model config's image token and count."""
    processor = DeepseekVLProcessor.from_folder(folder)
    if processor.image_token_id != cfg.image_token_id:
        raise ConfigError(f"{folder}: the tokenizer's {processor.placeholder} id {processor.image_token_id} != "
                          f"config.json image_token_id {cfg.image_token_id}")
    if processor.config.num_image_tokens != cfg.num_image_tokens:
        raise ConfigError(f"{folder}: processor num_image_tokens {processor.config.num_image_tokens} != the "
                          f"{cfg.num_image_tokens} tokens the vision tower gives per image")
    return processor
