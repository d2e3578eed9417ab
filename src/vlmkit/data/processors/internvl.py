"""InternVL processor: dynamic tiling with a thumbnail (transformers' GotOcr2 image processor).

Image (GotOcr2ImageProcessor, PIL backend, `crop_to_patches=True` as InternVLProcessor passes it),
for an image of size (h, w) and tiles of size (th, tw):

1. among the grids (cols, rows) with min_patches <= cols * rows <= max_patches (ordered by area),
   pick the one whose aspect ratio cols/rows is closest to w/h; on a tie the later grid wins when
   the image covers more than half of it (h * w > 0.5 * th * tw * cols * rows);
2. resize to (rows * th, cols * tw) (bicubic), cut into row-major tiles;
3. with more than one tile, append the whole image resized to (th, tw) (the thumbnail);
4. rescale + normalise. (max_patches <= 1: the image is just resized to (th, tw).)

pixel_values: float32 [total tiles, 3, th, tw] in image order; num_patches: int64 [N] tiles per
image. Text: each `<IMG_CONTEXT>` placeholder (what InternVL's chat template writes per image)
becomes `<img>` + `<IMG_CONTEXT>` * (image_seq_length * tiles) + `</img>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors import pixels
from vlmkit.data.processors.common import PromptTokenizer, TypeCProcessor, read_processor_files, size_field
from vlmkit.errors import CheckpointError, ConfigError

# The image tokens' default spellings (transformers' InternVL tokenizer attributes of these names).
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


@lru_cache(maxsize=16)
def tile_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with min_tiles <= cols * rows <= max_tiles, stably ordered by area."""
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def best_grid(height: int, width: int, tile_h: int, tile_w: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(cols, rows) of the tile grid for an image (see the module docstring, step 1)."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in tile_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_h * tile_w * cols * rows:
            best = (cols, rows)
    return best


@dataclass(kw_only=True, frozen=True)
class InternVLProcessorConfig:
    """GotOcr2ImageProcessor + InternVLProcessor fields, and the image tokens' spellings (the
    tokenizer_config.json "extra_special_tokens" transformers' InternVL tokenizer defines)."""

    tile_height: int
    tile_width: int
    min_patches: int = 1
    max_patches: int = 12
    resample: int = 3  # PIL bicubic
    image_seq_length: int = 256
    norm: pixels.Normalization = pixels.Normalization()
    context_token: str = IMAGE_TOKENS["context_image_token"]
    start_token: str = IMAGE_TOKENS["start_image_token"]
    end_token: str = IMAGE_TOKENS["end_image_token"]

    @classmethod
    def from_folder(cls, folder: str | Path) -> "InternVLProcessorConfig":
        image, proc = read_processor_files(folder)
        size = size_field(image, "size", f"{folder} image processor", "height", "width")
        tok_path = Path(folder) / "tokenizer_config.json"
        extra = json.loads(tok_path.read_text(encoding="utf-8")).get("extra_special_tokens", {}) \
            if tok_path.is_file() else {}
        extra = extra if isinstance(extra, dict) else {}
        config = cls(tile_height=size["height"], tile_width=size["width"],
                     min_patches=int(image.get("min_patches", 1)), max_patches=int(image.get("max_patches", 12)),
                     resample=int(image.get("resample", 3)), image_seq_length=int(proc.get("image_seq_length", 256)),
                     norm=pixels.Normalization.from_dict(image),
                     context_token=extra.get("context_image_token", IMAGE_TOKENS["context_image_token"]),
                     start_token=extra.get("start_image_token", IMAGE_TOKENS["start_image_token"]),
                     end_token=extra.get("end_image_token", IMAGE_TOKENS["end_image_token"]))
        if not 1 <= config.min_patches <= config.max_patches:
            raise ConfigError(f"{folder}: need 1 <= min_patches <= max_patches, got "
                              f"{config.min_patches}, {config.max_patches}")
        return config


def crop_to_tiles(image: np.ndarray, cfg: InternVLProcessorConfig) -> list[np.ndarray]:
    """uint8 [h, w, 3] -> row-major tiles (+ the thumbnail when there are several), uint8."""
    th, tw = cfg.tile_height, cfg.tile_width
    if cfg.max_patches <= 1:
        return [pixels.resize(image, th, tw, cfg.resample)]
    cols, rows = best_grid(*image.shape[:2], th, tw, cfg.min_patches, cfg.max_patches)
    canvas = pixels.resize(image, rows * th, cols * tw, cfg.resample)
    tiles = [canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(pixels.resize(image, th, tw, cfg.resample))
    return tiles


class InternVLProcessor(TypeCProcessor):
    """(prompts with `<IMG_CONTEXT>` placeholders, images) -> InternVL inputs, left padded by default:
    pixel_values float32 [total tiles, 3, th, tw] and num_patches int64 [N] (transformers drops
    the latter; the model only needs the tiles in order)."""

    config_class = InternVLProcessorConfig
    placeholder_field = "context_token"
    extra_tokens = ("start_token", "end_token")
    padding_side = "left"  # InternVLProcessor's text default

    def image_inputs(self, images: Sequence) -> dict[str, torch.Tensor]:
        """pixel_values float32 [total tiles, 3, th, tw] and num_patches int64 [N]."""
        per_image = [crop_to_tiles(pixels.load_rgb(src), self.config) for src in images]
        return {"pixel_values": pixels.stack([t for tiles in per_image for t in tiles], self.config.norm),
                "num_patches": torch.tensor([len(t) for t in per_image], dtype=torch.long)}

    def encode_images(self, groups):
        cfg = self.config
        out = self.image_inputs([img for g in groups for img in g])
        return out, [cfg.start_token + cfg.context_token * (cfg.image_seq_length * n) + cfg.end_token
                     for n in out["num_patches"].tolist()]


def build_processor(folder: str | Path, tokenizer, cfg) -> InternVLProcessor:
    """The InternVL registry record's processor builder: the folder's processor, checked against the
    model config `cfg` (an `InternVLConfig`). `tokenizer` is unused: the processor runs the folder's
    tokenizer.json itself. A folder without `image_seq_length` gets the model's tokens per tile."""
    config = InternVLProcessorConfig.from_folder(folder)
    if "image_seq_length" not in read_processor_files(folder)[1]:
        config = replace(config, image_seq_length=cfg.num_image_tokens)
    size = cfg.vision.image_size
    if (config.tile_height, config.tile_width) != (size, size) or config.image_seq_length != cfg.num_image_tokens:
        raise CheckpointError(f"{folder}: processor tiles {config.tile_height}x{config.tile_width} with "
                              f"{config.image_seq_length} tokens each, the model {size}x{size} with {cfg.num_image_tokens}")
    return InternVLProcessor(config, PromptTokenizer.from_folder(folder)).check_image_token(folder, cfg)


def processor_files(cfg) -> ProcessorFiles:
    """What an InternVL folder made by `vlmkit create` carries: the image tokens as the named special
    tokens transformers' InternVL tokenizer defines (InternVLProcessor reads them as tokenizer
    attributes), the chat markers of InternVL3's template, and the model's tokens per tile."""
    return ProcessorFiles(
        special_tokens=("<|im_start|>", "<|im_end|>"), named_tokens={**IMAGE_TOKENS, "video_token": "<video>"},
        processor_config={"processor_class": "InternVLProcessor", "image_seq_length": cfg.num_image_tokens},
        chat_template=bundled_chat_template("internvl3"))
