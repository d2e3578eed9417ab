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
from vlmkit.data.processors.common import (PromptTokenizer, build_text, images_per_prompt, prompts_list,
                                           read_processor_files, size_field)
from vlmkit.errors import ConfigError


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


class LlavaProcessor:
    """(prompts with `<image>` placeholders, images) -> LLaVA 1.5 model inputs.

    Args:
        config: the processor config (`LlavaProcessorConfig.from_folder`).
        tokenizer: the checkpoint's tokenizer (`PromptTokenizer.from_folder`).
    """

    def __init__(self, config: LlavaProcessorConfig, tokenizer: PromptTokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.image_token_id = tokenizer.token_id(config.image_token)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LlavaProcessor":
        return cls(LlavaProcessorConfig.from_folder(folder), PromptTokenizer.from_folder(folder))

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """float32 [N, 3, H, W] for N image sources."""
        cfg = self.config.image
        return pixels.stack([cfg.resize_and_crop(pixels.load_rgb(src)) for src in images], cfg.norm)

    def __call__(self, prompts: str | Sequence[str], images=None,
                 padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """Build a padded batch.

        Args:
            prompts: B prompts, each with one `<image>` per image it refers to.
            images: a flat list in placeholder order, or one list per prompt (or one image).
            padding_side: "left" / "right"; default: the tokenizer's.
        Returns:
            input_ids, attention_mask: int64 [B, T]; pixel_values: float32 [N, 3, H, W] (N images).
        Raises:
            DataError: images and `<image>` placeholders do not match up.
        """
        prompts = prompts_list(prompts)
        groups = images_per_prompt(prompts, images, self.config.image_token)
        flat = [img for g in groups for img in g]
        out, expansions = {}, []
        if flat:
            out["pixel_values"] = self.pixel_values(flat)
            n_tokens = self.config.tokens_for(*out["pixel_values"].shape[-2:])
            expansions = [self.config.image_token * n_tokens] * len(flat)
        text = build_text(self.tokenizer, prompts, self.config.image_token, expansions,
                          padding_side or self.tokenizer.padding_side)
        return {**text, **out}
