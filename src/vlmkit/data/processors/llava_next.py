"""LLaVA-NeXT ("anyres") processor: tiles at the best grid resolution plus a base image.

Image (transformers' LlavaNextImageProcessor, PIL backend), for an image of size (h, w):

1. best = the `image_grid_pinpoints` entry (H, W) that keeps the most of the image's pixels when it
   is scaled to fit (ties: the least wasted area);
2. resize to fit inside best keeping the aspect ratio (the scaled side rounded up), zero-pad to best
   centred, cut into crop-size tiles in row-major order;
3. base image = the whole image resized to (size, size), placed first;
4. every tile: resize (shortest edge, a no-op for square tiles) + centre crop + rescale + normalise.

pixel_values: float32 [N, max_tiles, 3, S, S], images with fewer tiles zero-padded; image_sizes:
int64 [N, 2] = original (h, w).

Image tokens per `<image>` (LlavaNextProcessor): the base image gives (S/p)^2 (+ additional tokens);
the tiles form a (rows * S/p) x (cols * S/p) feature grid from which the rows or columns that are
pure padding are removed ("unpadding": the image's aspect ratio decides which), and one
`image_newline` token ends each remaining row. Minus 1 with the "default" feature strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors import llava, pixels
from vlmkit.data.processors.common import TypeCProcessor, read_processor_files
from vlmkit.data.processors.llava import ClipImageConfig, LlavaProcessorConfig
from vlmkit.errors import ConfigError
from vlmkit.models.parts.anyres import select_best_resolution, unpadded_grid


def fit_size(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """Size of (height, width) scaled to fit (target_h, target_w); the scaled side rounds up."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


@dataclass(kw_only=True, frozen=True)
class LlavaNextProcessorConfig(LlavaProcessorConfig):
    """LlavaProcessorConfig plus the anyres grid (image_grid_pinpoints, [[H, W], ...])."""

    image_grid_pinpoints: tuple[tuple[int, int], ...]
    do_pad: bool = True

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LlavaNextProcessorConfig":
        base = LlavaProcessorConfig.from_folder(folder)
        image, _ = read_processor_files(folder)
        pinpoints = image.get("image_grid_pinpoints")
        if not pinpoints or any(len(p) != 2 for p in pinpoints):
            raise ConfigError(f"{folder}: image processor needs 'image_grid_pinpoints' as [[H, W], ...]")
        return cls(**{f: getattr(base, f) for f in base.__dataclass_fields__},
                   image_grid_pinpoints=tuple((int(h), int(w)) for h, w in pinpoints),
                   do_pad=bool(image.get("do_pad", True)))

    @property
    def tile_size(self) -> int:
        img = self.image
        if img.crop_size:
            return img.crop_size["height"]
        return img.size.get("height", img.size.get("shortest_edge"))

    def base_size(self) -> tuple[int, int]:
        size = self.image.size
        return (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2

    def tokens_for(self, orig_h: int, orig_w: int, height: int, width: int) -> int:
        """Image tokens for an (orig_h, orig_w) image whose tiles are [3, height, width]."""
        best_h, best_w = select_best_resolution(orig_h, orig_w, self.image_grid_pinpoints)
        ph, pw = height // self.patch_size, width // self.patch_size
        rows, cols = unpadded_grid(orig_h, orig_w, ph * (best_h // height), pw * (best_w // width))
        n = rows * cols + rows + ph * pw + self.num_additional_image_tokens  # tiles + newlines + base
        return n - 1 if self.vision_feature_select_strategy == "default" else n


def anyres_tiles(image: np.ndarray, config: LlavaNextProcessorConfig) -> list[np.ndarray]:
    """uint8 [h, w, 3] -> [base image] + row-major tiles, each still uint8 and before resize/crop."""
    h, w = image.shape[:2]
    best_h, best_w = select_best_resolution(h, w, config.image_grid_pinpoints)
    new_h, new_w = fit_size(h, w, best_h, best_w)
    resized = pixels.resize(image, new_h, new_w, config.image.resample)
    top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
    canvas = np.zeros((best_h, best_w, 3), dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    t = config.tile_size
    tiles = [canvas[i:i + t, j:j + t] for i in range(0, best_h, t) for j in range(0, best_w, t)]
    return [pixels.resize(image, *config.base_size(), config.image.resample)] + tiles


class LlavaNextProcessor(TypeCProcessor):
    """(prompts with `<image>` placeholders, images) -> LLaVA-NeXT inputs: pixel_values float32
    [N, max_tiles, 3, S, S] and image_sizes int64 [N, 2]."""

    config_class = LlavaNextProcessorConfig

    def image_inputs(self, images: Sequence) -> dict[str, torch.Tensor]:
        """pixel_values float32 [N, max_tiles, 3, S, S] and image_sizes int64 [N, 2] for N images."""
        cfg: ClipImageConfig = self.config.image
        if not self.config.do_pad:
            raise ConfigError("LLaVA-NeXT batches need do_pad=True (tiles per image differ)")
        per_image, sizes = [], []
        for src in images:
            rgb = pixels.load_rgb(src)
            sizes.append(rgb.shape[:2])
            per_image.append(pixels.stack([cfg.resize_and_crop(t) for t in anyres_tiles(rgb, self.config)],
                                          cfg.norm))
        most = max(p.shape[0] for p in per_image)
        values = torch.zeros(len(per_image), most, *per_image[0].shape[1:], dtype=torch.float32)
        for i, p in enumerate(per_image):
            values[i, : p.shape[0]] = p
        return {"pixel_values": values, "image_sizes": torch.tensor(sizes, dtype=torch.long)}

    def encode_images(self, groups):
        out = self.image_inputs([img for g in groups for img in g])
        height, width = out["pixel_values"].shape[-2:]
        return out, [self.placeholder * self.config.tokens_for(h, w, height, width)
                     for h, w in out["image_sizes"].tolist()]


def build_processor(folder: str | Path, tokenizer, cfg) -> LlavaNextProcessor:
    """The llava_next family's processor builder (named by its registry record).

    Reads the folder's processor files and tokenizer.json (what transformers' processor runs; the
    pipeline's `tokenizer` is not needed) and checks them against the model config `cfg`
    (`LlavaNextConfig`): the `<image>` id, the tile size and, for the base image and every
    pinpoint, the tokens an image expands to, so prompts always fit the packed features.
    """
    proc = LlavaNextProcessor.from_folder(folder).check_image_token(folder, cfg)
    tile = cfg.vision.image_size
    if proc.config.tile_size != tile:
        raise ConfigError(f"{folder}: the image processor's crop size {proc.config.tile_size} != the vision "
                          f"image_size {tile}")
    for h, w in ((tile, tile), *cfg.image_grid_pinpoints):
        expanded, packed = proc.config.tokens_for(h, w, tile, tile), cfg.tokens_for(h, w)
        if expanded != packed:
            raise ConfigError(f"{folder}: the processor expands a {h}x{w} image to {expanded} tokens but the model "
                              f"packs {packed} (check image_grid_pinpoints, patch_size, num_additional_image_tokens "
                              "and vision_feature_select_strategy)")
    return proc


def processor_files(cfg) -> ProcessorFiles:
    """What a LLaVA-NeXT folder made by `vlmkit create` carries: LLaVA's processor fields (the anyres
    grid is image-processor metadata, in preprocessor_config.json) and llava-v1.6-mistral's template."""
    base = llava.processor_files(cfg)
    return replace(base, processor_config={**base.processor_config, "processor_class": "LlavaNextProcessor"},
                   chat_template=bundled_chat_template("llava-v1.6-mistral"))
