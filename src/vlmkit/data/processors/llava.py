"""LLaVA 1.5 processor: CLIP-style image preprocessing and the `<image>` expansion.

Image (transformers' CLIPImageProcessor, PIL backend):

    RGB uint8 -> resize the shortest edge to size.shortest_edge (bicubic, long side floored)
              -> centre crop crop_size (zero pad if smaller) -> rescale -> normalise -> [3, H, W]

Text (LlavaProcessor): each `<image>` becomes (H // patch) * (W // patch) image tokens, plus
`num_additional_image_tokens` (1 for CLIP's class token), minus 1 when
`vision_feature_select_strategy` is "default" (the class token's feature is dropped): 576 for
llava-1.5 at 336 px with 14-px patches. BOS comes from the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.processors import pixels
from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors.common import TypeCProcessor, read_processor_files, size_field
from vlmkit.data.processors.pixtral import build_processor as build_pixtral
from vlmkit.data.processors.pixtral import processor_files as pixtral_processor_files
from vlmkit.errors import ConfigError
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig


@dataclass(kw_only=True, frozen=True)
class ClipImageConfig:
    """CLIPImageProcessor fields (preprocessor_config.json / processor_config.json "image_processor").

    size: {"shortest_edge": n} (keep aspect) or {"height": h, "width": w} (stretch).
    crop_size: {"height": h, "width": w}; used when do_center_crop.
    resample: PIL filter id (3 = bicubic).
    """

    size: dict[str, int]
    crop_size: dict[str, int] | None = None
    do_resize: bool = True
    do_center_crop: bool = True
    resample: int = 3
    norm: pixels.Normalization = pixels.Normalization()

    @classmethod
    def from_dict(cls, d: dict, name: str = "image processor config") -> "ClipImageConfig":
        do_crop = bool(d.get("do_center_crop", True))
        return cls(size=size_field(d, "size", name, "shortest_edge", "height", "width"),
                   crop_size=size_field(d, "crop_size", name, "height", "width") if do_crop else None,
                   do_resize=bool(d.get("do_resize", True)), do_center_crop=do_crop,
                   resample=int(d.get("resample", 3)), norm=pixels.Normalization.from_dict(d))

    def resize(self, image: np.ndarray, size: dict[str, int] | None = None) -> np.ndarray:
        """PIL resize by a size dict (default: `self.size`), as transformers' PilBackend.resize."""
        size = self.size if size is None else size
        if "shortest_edge" in size:
            height, width = pixels.shortest_edge_size(*image.shape[:2], size["shortest_edge"])
        elif "height" in size and "width" in size:
            height, width = size["height"], size["width"]
        else:
            raise ConfigError(f"image size {size} needs 'shortest_edge' or 'height' and 'width'")
        return pixels.resize(image, height, width, self.resample)

    def resize_and_crop(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> the uint8 model input (resize, then centre crop)."""
        if self.do_resize:
            image = self.resize(image)
        if self.do_center_crop:
            image = pixels.center_crop(image, self.crop_size["height"], self.crop_size["width"])
        return image


@dataclass(kw_only=True, frozen=True)
class LlavaProcessorConfig:
    """LlavaProcessor fields (processor_config.json) plus its image processor."""

    image: ClipImageConfig
    patch_size: int
    vision_feature_select_strategy: str = "default"
    num_additional_image_tokens: int = 0
    image_token: str = "<image>"

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LlavaProcessorConfig":
        image, proc = read_processor_files(folder)
        if "patch_size" not in proc:
            raise ConfigError(f"{folder}: processor_config.json has no 'patch_size'")
        return cls(image=ClipImageConfig.from_dict(image, f"{folder} image processor"),
                   patch_size=int(proc["patch_size"]),
                   vision_feature_select_strategy=proc.get("vision_feature_select_strategy") or "default",
                   num_additional_image_tokens=int(proc.get("num_additional_image_tokens", 0)),
                   image_token=proc.get("image_token", "<image>"))

    def tokens_for(self, height: int, width: int) -> int:
        """Image tokens for one processed [3, height, width] image."""
        n = (height // self.patch_size) * (width // self.patch_size) + self.num_additional_image_tokens
        return n - 1 if self.vision_feature_select_strategy == "default" else n


class LlavaProcessor(TypeCProcessor):
    """(prompts with `<image>` placeholders, images) -> LLaVA 1.5 inputs; pixel_values float32 [N, 3, H, W]."""

    config_class = LlavaProcessorConfig
    # pixel_values[i] is the i-th image alone, encoded on its own: features may be cached per image.
    per_image_pixels = True

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """float32 [N, 3, H, W] for N image sources."""
        cfg = self.config.image
        return pixels.stack([cfg.resize_and_crop(pixels.load_rgb(src)) for src in images], cfg.norm)

    def encode_images(self, groups):
        values = self.pixel_values([img for g in groups for img in g])
        n_tokens = self.config.tokens_for(*values.shape[-2:])
        return {"pixel_values": values}, [self.placeholder * n_tokens] * values.shape[0]


def build_processor(folder: str | Path, tokenizer, cfg) -> LlavaProcessor:
    """The LLaVA family's processor builder (named by its registry record): the folder's own
    processor files; its `<image>` id must be the config's image_token_index. A folder saved with
    transformers' PixtralProcessor (a LLaVA checkpoint with the Pixtral tower) gets vlmkit's."""
    image, proc = read_processor_files(folder)  # 4.x folders name the class in preprocessor_config.json
    if (proc.get("processor_class") or image.get("processor_class")) == "PixtralProcessor":
        return build_pixtral(folder, tokenizer, cfg)
    return LlavaProcessor.from_folder(folder).check_image_token(folder, cfg)


def processor_files(cfg) -> ProcessorFiles:
    """What a LLaVA folder made by `vlmkit create` carries for LlavaProcessor (and transformers'):
    CLIP's class token is the one additional image token; LLaVA-1.5's chat template. A Pixtral
    tower's folder carries PixtralProcessor's instead."""
    if type(cfg.vision) is PixtralVisionConfig:
        return pixtral_processor_files(cfg)
    return ProcessorFiles(
        special_tokens=("<image>",),
        processor_config={"processor_class": "LlavaProcessor", "image_token": "<image>",
                          "patch_size": cfg.vision.patch_size,
                          "vision_feature_select_strategy": cfg.features.vision_feature_select_strategy,
                          "num_additional_image_tokens": int(cfg.vision.class_token)},
        chat_template=bundled_chat_template("llava-1.5"))
