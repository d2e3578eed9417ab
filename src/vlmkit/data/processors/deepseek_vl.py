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
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
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



@dataclass(kw_only=True, frozen=True)
class DeepseekVLHybridProcessorConfig(DeepseekVLProcessorConfig):
    """DeepseekVLHybridImageProcessor: the low-resolution fields above plus the high-resolution view's
    (`high_res_size`, `high_res_resample`, `high_res_image_mean` / `_std`, held as a second config)."""

    high_res: DeepseekVLProcessorConfig

    @classmethod
    def from_folder(cls, folder: str | Path) -> "DeepseekVLHybridProcessorConfig":
        low = DeepseekVLProcessorConfig.from_folder(folder)
        image, _ = read_processor_files(folder)
        size = size_field(image, "high_res_size", f"{folder} image processor", "height", "width")
        if size["height"] != size["width"]:
            raise ConfigError(f"{folder}: DeepSeek-VL hybrid needs a square high_res_size, got {size}")
        norm = pixels.Normalization.from_dict({**image, "image_mean": image.get("high_res_image_mean", low.norm.image_mean),
                                               "image_std": image.get("high_res_image_std", low.norm.image_std)})
        high = replace(low, size=size["height"], resample=int(image.get("high_res_resample", 3)), norm=norm)
        return cls(**{f.name: getattr(low, f.name) for f in fields(low)}, high_res=high)


class DeepseekVLHybridProcessor(DeepseekVLProcessor):
    """DeepSeek-VL hybrid inputs: `high_res_pixel_values` float32 [N, 3, S', S'] (resize + pad at the high
    resolution, padded with the high-res mean colour) and `pixel_values` [N, 3, S, S], that uint8 square
    resized to S (as transformers: the low view is made from the padded high-res one)."""

    config_class = DeepseekVLHybridProcessorConfig

    def encode_images(self, groups):
        high = [self.config.high_res.prepare(pixels.load_rgb(src)) for g in groups for src in g]
        low = [self.config.prepare(square) for square in high]
        values = {"pixel_values": pixels.stack(low, self.config.norm),
                  "high_res_pixel_values": pixels.stack(high, self.config.high_res.norm)}
        return values, [self.placeholder * self.config.num_image_tokens] * len(low)


def _checked(processor: DeepseekVLProcessor, folder, cfg) -> DeepseekVLProcessor:
    """`processor` if its image token and count agree with the model config; ConfigError otherwise."""
    if processor.image_token_id != cfg.image_token_id:
        raise ConfigError(f"{folder}: the tokenizer's {processor.placeholder} id {processor.image_token_id} != "
                          f"config.json image_token_id {cfg.image_token_id}")
    if processor.config.num_image_tokens != cfg.num_image_tokens:
        raise ConfigError(f"{folder}: processor num_image_tokens {processor.config.num_image_tokens} != the "
                          f"{cfg.num_image_tokens} tokens the vision tower gives per image")
    return processor


def build_processor(folder: str | Path, tokenizer, cfg) -> DeepseekVLProcessor:
    """The deepseek_vl family's processor builder (named by its registry record): the folder's own
    processor files and tokenizer.json, checked against the model config's image token and count."""
    return _checked(DeepseekVLProcessor.from_folder(folder), folder, cfg)


def build_hybrid_processor(folder: str | Path, tokenizer, cfg) -> DeepseekVLHybridProcessor:
    """The deepseek_vl_hybrid family's processor builder; also checks both image sizes."""
    processor = _checked(DeepseekVLHybridProcessor.from_folder(folder), folder, cfg)
    sizes = (processor.config.size, processor.config.high_res.size)
    if sizes != (cfg.vision.image_size, cfg.high_res_vision.image_size):
        raise ConfigError(f"{folder}: processor image sizes {sizes} != the towers' "
                          f"{(cfg.vision.image_size, cfg.high_res_vision.image_size)}")
    return processor



def processor_files(cfg, processor_class: str = "DeepseekVLProcessor") -> ProcessorFiles:
    """What a DeepSeek-VL folder made by `vlmkit create` carries: the image token as the tokenizer's
    named "image_token" (transformers' DeepseekVLProcessor reads `tokenizer.image_token`), the
    processor with the model's tokens per image, and the chat template transformers' conversion
    writes into deepseek-community/deepseek-vl-* (the same for the hybrid)."""
    return ProcessorFiles(
        named_tokens={"image_token": "<image_placeholder>"},
        processor_config={"processor_class": processor_class, "num_image_tokens": cfg.num_image_tokens},
        chat_template=bundled_chat_template("deepseek-vl"))


def hybrid_processor_files(cfg) -> ProcessorFiles:
    """The deepseek_vl_hybrid record's `processor_files`: the above, for DeepseekVLHybridProcessor."""
    return processor_files(cfg, "DeepseekVLHybridProcessor")
