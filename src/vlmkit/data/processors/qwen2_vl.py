"""Qwen2-VL processor: images at their own size as flattened patches, `<|image_pad|>` per merged token.

Image (transformers' Qwen2VLImageProcessorPil), for an image of h x w pixels, factor
F = patch_size * merge_size, and the pixel budget [min_pixels, max_pixels] (`size.shortest_edge`,
`size.longest_edge`) — `smart_resize`:

    h', w' = round(h / F) * F, round(w / F) * F             (Python's round: halves to even)
    if h' w' > max_pixels:  b = sqrt(h w / max_pixels); h', w' = max(F, floor(h / b / F) * F), ...
    elif h' w' < min_pixels: b = sqrt(min_pixels / (h w)); h', w' = ceil(h b / F) * F, ...
    RGB uint8 -> bicubic resize to (h', w') -> rescale -> normalise (CLIP's mean / std) -> [3, h', w']

then patchify: the h'/P x w'/P patches in spatial-merge order (the merge x merge blocks
row-major, patches inside a block row-major), each repeated over the temporal patch (a still
image is its own frame pair) and flattened as (C, Tp, P, P): pixel_values float32
[sum h'w'/P^2, C * Tp * P * P], image_grid_thw int64 [M, 3] = (1, h'/P, w'/P).

Text (Qwen2VLProcessor): each `<|image_pad|>` placeholder (the chat template wraps it in
`<|vision_start|>` / `<|vision_end|>`) becomes h'w' / (P^2 merge^2) `<|image_pad|>` tokens. A 40 x 56
image with 16-px patches and merge 2 becomes 32 x 64: 8 tokens. Videos are not supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors import pixels
from vlmkit.data.processors.common import TypeCProcessor, read_processor_files
from vlmkit.errors import ConfigError, DataError

# Qwen2VLImageProcessorPil's class defaults, for fields a folder leaves out.
_IMAGE_DEFAULTS = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                       resample=3, patch_size=14, temporal_patch_size=2, merge_size=2,
                       size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280})


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(h', w') multiples of `factor` with about the image's aspect ratio and h' w' within the budget."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise DataError(f"an image of {height} x {width} pixels has an aspect ratio over 200 (Qwen2-VL's limit)")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """[C, H, W] -> flattened patches [H W / P^2, C * Tp * P * P] in spatial-merge order."""
    C, H, W = x.shape
    gh, gw = H // patch, W // patch
    x = x.reshape(C, gh // merge, merge, patch, gw // merge, merge, patch)  # [C, bh, m, P, bw, m, P]
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # [bh, bw, m, m, C, P, P]
    x = x[:, :, :, :, :, None].expand(*x.shape[:5], temporal, patch, patch)  # [bh, bw, m, m, C, Tp, P, P]
    return x.reshape(gh * gw, C * temporal * patch * patch)


@dataclass(kw_only=True, frozen=True)
class Qwen2VLProcessorConfig:
    """Qwen2VLImageProcessor fields (preprocessor_config.json) and the processor's image token."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    do_resize: bool = True
    resample: int = 3
    norm: pixels.Normalization = pixels.Normalization()
    image_token: str = "<|image_pad|>"

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Qwen2VLProcessorConfig":
        image, proc = read_processor_files(folder)
        image = {**_IMAGE_DEFAULTS, **image}
        size = image.get("size") or {}
        lo = image.get("min_pixels") or size.get("shortest_edge")
        hi = image.get("max_pixels") or size.get("longest_edge")
        if not lo or not hi:
            raise ConfigError(f"{folder}: the Qwen2-VL image processor needs size.shortest_edge and "
                              f"size.longest_edge (min / max pixels), got {size}")
        return cls(patch_size=int(image["patch_size"]), temporal_patch_size=int(image["temporal_patch_size"]),
                   merge_size=int(image["merge_size"]), min_pixels=int(lo), max_pixels=int(hi),
                   do_resize=bool(image.get("do_resize", True)), resample=int(image["resample"]),
                   norm=pixels.Normalization.from_dict(image), image_token=proc.get("image_token", "<|image_pad|>"))


class Qwen2VLProcessor(TypeCProcessor):
    """(prompts with `<|image_pad|>` placeholders, images) -> pixel_values float32
    [N, C*Tp*P*P] (flattened patches) and image_grid_thw int64 [M, 3]."""

    config_class = Qwen2VLProcessorConfig

    def image(self, src) -> torch.Tensor:
        """One image source -> normalised float32 [3, h', w'] (h', w' multiples of patch * merge)."""
        from vlmkit.data.processors.native import check_not_below_patch, note_resized

        cfg, image = self.config, pixels.load_rgb(src)
        height, width = image.shape[:2]
        factor = cfg.patch_size * cfg.merge_size
        if cfg.do_resize:
            height, width = smart_resize(height, width, factor, cfg.min_pixels, cfg.max_pixels)
            if image.shape[0] * image.shape[1] > cfg.max_pixels:
                note_resized(src, image.shape[:2], (height, width), f"max_pixels {cfg.max_pixels}")
        elif height % factor or width % factor:
            raise DataError(f"an image of {height} x {width} pixels is not a multiple of {factor} and do_resize is off")
        check_not_below_patch(src, *image.shape[:2], cfg.patch_size)  # one line, not a pixel blown up to a patch
        return pixels.to_pixel_values(pixels.resize(image, height, width, cfg.resample), cfg.norm)

    def encode_images(self, groups):
        cfg = self.config
        patches, grids = [], []
        for src in (s for g in groups for s in g):
            x = self.image(src)
            patches.append(patchify(x, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size))
            grids.append([1, x.shape[1] // cfg.patch_size, x.shape[2] // cfg.patch_size])
        expansions = [self.placeholder * (h * w // cfg.merge_size**2) for _, h, w in grids]
        return {"pixel_values": torch.cat(patches), "image_grid_thw": torch.tensor(grids, dtype=torch.long)}, expansions


def build_processor(folder: str | Path, tokenizer, cfg) -> Qwen2VLProcessor:
    """The Qwen2-VL processor builder: the folder's own processor files; its `<|image_pad|>` id must
    be the config's image_token_id and its patch / merge sizes the tower's."""
    processor = Qwen2VLProcessor.from_folder(folder).check_image_token(folder, cfg)
    c, v = processor.config, cfg.vision
    if (c.patch_size, c.merge_size, c.temporal_patch_size) != (v.patch_size, v.spatial_merge_size,
                                                               v.temporal_patch_size):
        raise ConfigError(f"{folder}: processor patch / merge / temporal sizes {c.patch_size} / {c.merge_size} / "
                          f"{c.temporal_patch_size} != the vision config's {v.patch_size} / {v.spatial_merge_size} / "
                          f"{v.temporal_patch_size}")
    return processor


# The tokens of Qwen2-VL's tokenizer its chat template writes (ChatML markers, the vision span).
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def processor_files(cfg) -> ProcessorFiles:
    """What a Qwen2-VL folder made by `vlmkit create` carries for Qwen2VLProcessor (and
    transformers'): its tokenizer's special tokens and the Qwen2-VL-Instruct chat template."""
    return ProcessorFiles(special_tokens=SPECIAL_TOKENS, processor_config={"processor_class": "Qwen2VLProcessor"},
                          chat_template=bundled_chat_template("qwen2-vl"))
