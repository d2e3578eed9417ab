"""One image per prompt, laid out as each family's processor lays it out: the image part of the
prompt's token ids and the family's image entries, for bench_generate.py (via `_families.make_batch`).

A builder is `(cfg, rows, g, dtype) -> Images`; `LAYOUTS` maps a family to its builder, and
`TOWER_LAYOUTS` maps a vision tower family to one where the tower, not the model family, fixes the
layout (LLaVA with a Pixtral tower). Pixels are uniform noise in [-1, 1], made on the CPU: the
worker moves every tensor of the batch to its device.

Image sizes: the tower's own `image_size` (a full-size square image) where it has one; LLaVA-NeXT
the first of its pinpoints (base image + its tiles); Qwen2-VL a `QWEN_PATCHES` x `QWEN_PATCHES`
patch grid (224 x 224 pixels at patch 14: 64 merged tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

# Pixtral's `[IMG_BREAK]` / `[IMG_END]` ids (params.json; the debug presets use the same ids).
PIXTRAL_BREAK, PIXTRAL_END = 12, 13
QWEN_PATCHES = 16  # patches per side of the Qwen2-VL image (a multiple of the merge size)


class Images(NamedTuple):
    """tokens: the image part of one prompt (every row has one image of the same size);
    entries: the image tensors of all rows, as the processor names them; positions: the vision
    tower's sequence length per image (for the prefill floor); token_types: the batch also needs
    transformers' `mm_token_type_ids` (1 at image tokens), which only transformers reads."""

    tokens: list[int]
    entries: dict
    positions: int
    token_types: bool = False


def _noise(shape, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    return (torch.rand(*shape, generator=g) * 2 - 1).to(dtype)


def one_image(cfg, rows: int, g, dtype) -> Images:
    """pixel_values [B, 3, S, S] and `cfg.num_image_tokens` placeholders (PaliGemma, LLaVA,
    InternVL with one tile, DeepSeek-VL)."""
    s = cfg.vision.image_size
    return Images([cfg.image_token_id] * cfg.num_image_tokens, {"pixel_values": _noise((rows, 3, s, s), g, dtype)},
                  cfg.vision.num_positions)


def frames(cfg, rows: int, g, dtype) -> Images:
    """pixel_values [B, 1, 3, S, S] + pixel_attention_mask [B, 1, S, S]: one frame per prompt, as
    Idefics3's processor lays out an image of at most max_image_size (no tiles, no padding)."""
    base = one_image(cfg, rows, g, dtype)
    pixels = base.entries["pixel_values"][:, None]  # [B, 1, 3, S, S]
    mask = torch.ones(pixels.shape[:2] + pixels.shape[3:], dtype=torch.long)  # [B, 1, S, S]
    return base._replace(entries={"pixel_values": pixels, "pixel_attention_mask": mask})


def high_res(cfg, rows: int, g, dtype) -> Images:
    """DeepSeek-VL hybrid: the SigLIP image [B, 3, S, S] and the SAM one [B, 3, S', S']."""
    base = one_image(cfg, rows, g, dtype)
    s = cfg.high_res_vision.image_size
    return base._replace(entries={**base.entries, "high_res_pixel_values": _noise((rows, 3, s, s), g, dtype)})


def native_resolution(cfg, rows: int, g, dtype) -> Images:
    """Pixtral tower (LLaVA-Pixtral, Mistral 3): a full-size square image, pixel_values
    [B, 3, S, S] + image_sizes [B, 2]; its tokens are rows of `[IMG]` each ended by `[IMG_BREAK]`,
    the last by `[IMG_END]` (`cfg.num_image_tokens` `[IMG]` in a square, after any patch merging)."""
    s, side = cfg.vision.image_size, math.isqrt(cfg.num_image_tokens)
    tokens = ([cfg.image_token_id] * side + [PIXTRAL_BREAK]) * side
    sizes = torch.tensor([[s, s]] * rows)
    entries = {"pixel_values": _noise((rows, 3, s, s), g, dtype), "image_sizes": sizes}
    return Images(tokens[:-1] + [PIXTRAL_END], entries, (s // cfg.vision.patch_size) ** 2)


def anyres(cfg, rows: int, g, dtype) -> Images:
    """LLaVA-NeXT: an image of the first pinpoint's size, as the base image + its tiles
    (pixel_values [B, K, 3, S, S]) with image_sizes [B, 2]; `cfg.tokens_for` its tokens."""
    (h, w), s = cfg.image_grid_pinpoints[0], cfg.vision.image_size
    k = cfg.num_tiles(h, w)
    return Images([cfg.image_token_id] * cfg.tokens_for(h, w),
                  {"pixel_values": _noise((rows, k, 3, s, s), g, dtype), "image_sizes": torch.tensor([[h, w]] * rows)},
                  k * cfg.vision.num_positions)


def patches(cfg, rows: int, g, dtype) -> Images:
    """Qwen2-VL / Qwen2.5-VL: each image as flattened patches, pixel_values
    [B * t * h * w, 3 * Tp * P * P] with image_grid_thw [B, 3] = (1, h, w), between
    `<|vision_start|>` and `<|vision_end|>`: h * w / merge^2 `<|image_pad|>` tokens."""
    v, n = cfg.vision, QWEN_PATCHES
    pixels = _noise((rows * n * n, v.in_channels * v.temporal_patch_size * v.patch_size**2), g, dtype)
    tokens = [cfg.vision_start_token_id, *[cfg.image_token_id] * (n * n // v.spatial_merge_size**2),
              cfg.vision_end_token_id]
    return Images(tokens, {"pixel_values": pixels, "image_grid_thw": torch.tensor([[1, n, n]] * rows)}, n * n,
                  token_types=True)


# Family -> builder; families not listed use `one_image`.
LAYOUTS: dict[str, Callable[..., Images]] = {
    "idefics3": frames, "deepseek_vl_hybrid": high_res, "mistral3": native_resolution, "llava_next": anyres,
    "qwen2_vl": patches, "qwen2_5_vl": patches,
}
# Vision tower family -> builder, before `LAYOUTS`: the tower decides (LLaVA's Pixtral presets).
TOWER_LAYOUTS: dict[str, Callable[..., Images]] = {"pixtral_vision": native_resolution}

# How wide and deep each family's vision tower is (for its attention FLOPs in the prefill floor),
# and where it lives in the model; the default reads `cfg.vision.hidden_size` / `num_layers`.
TOWERS: dict[str, Callable] = {
    "qwen2_vl": lambda m: (m.visual, m.cfg.vision.embed_dim, m.cfg.vision.depth),
    "qwen2_5_vl": lambda m: (m.visual, m.cfg.vision.embed_dim, m.cfg.vision.depth),
}


def tower(family: str, model) -> tuple:
    """(vision tower module, its width, its depth) of a built (meta) model of `family`."""
    default = lambda m: (m.vision_tower, m.cfg.vision.hidden_size, m.cfg.vision.num_layers)  # noqa: E731
    return TOWERS.get(family, default)(model)
