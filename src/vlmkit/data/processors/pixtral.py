"""Pixtral processor: each image at its own size, and rows of `[IMG]` ended by `[IMG_BREAK]`.

Image (transformers' PixtralImageProcessor, PIL backend), for an image of h x w pixels, patch P
(the processor's `patch_size` times `spatial_merge_size`) and `size.longest_edge` L:

    ratio = max(h / L, w / L);  if ratio > 1: h, w = floor(h / ratio), floor(w / ratio)
    h, w = ceil(h / P) * P, ceil(w / P) * P            (up to whole patches: may upscale a little)
    RGB uint8 -> bicubic resize to (h, w) -> rescale -> normalise (CLIP's mean / std) -> [3, h, w]

pixel_values: float32 [M, 3, H_max, W_max], each image zero-padded at the bottom / right to the
largest of the batch (padding the model never reads: see models/parts/pixtral_vit); image_sizes:
int64 [M, 2], each image's (h, w) after resizing.

Text (PixtralProcessor): each `[IMG]` placeholder becomes the image's h/P rows of w/P `[IMG]`
tokens, each row followed by `[IMG_BREAK]`, the last one replaced by `[IMG_END]`:
h/P * (w/P + 1) tokens. A 40 x 56 image with 8-px patches: 5 rows of 7 -> 35 + 5 = 40 tokens.
Only the `[IMG]` tokens take image features; the break and end tokens are plain text embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors import pixels
from vlmkit.data.processors.common import TypeCProcessor, read_processor_files, size_field
from vlmkit.data.processors.native import check_not_below_patch, note_resized
from vlmkit.errors import ConfigError, DataError

# transformers' PixtralImageProcessor class defaults (written by save_pretrained, but older folders
# may leave them out): OpenAI CLIP's normalisation, bicubic, 1024-px longest edge.
_IMAGE_DEFAULTS = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
                       resample=3, size={"longest_edge": 1024})
IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")


def resized_size(height: int, width: int, longest_edge: int, patch: int) -> tuple[int, int]:
    """(h, w) an image of height x width pixels is resized to (transformers' get_resize_output_image_size)."""
    ratio = max(height / longest_edge, width / longest_edge)
    if ratio > 1:  # floor, not round, so that the result never exceeds the longest edge
        height, width = math.floor(height / ratio), math.floor(width / ratio)
    if height < 1 or width < 1:
        raise DataError(f"an image of {height} x {width} pixels after fitting into {longest_edge} px has an empty "
                        "side (too extreme an aspect ratio)")
    return ((height - 1) // patch + 1) * patch, ((width - 1) // patch + 1) * patch


@dataclass(kw_only=True, frozen=True)
class PixtralProcessorConfig:
    """PixtralProcessor fields (processor_config.json) plus its image processor's.

    patch: the processor's patch_size * spatial_merge_size (it overrides the image processor's).
    merge: spatial_merge_size (Mistral 3's; 1 for Pixtral): the tower's own patch is patch / merge.
    longest_edge: the image processor's size.longest_edge.
    """

    patch: int
    longest_edge: int
    merge: int = 1
    do_resize: bool = True
    resample: int = 3
    norm: pixels.Normalization = pixels.Normalization()
    image_token: str = "[IMG]"
    image_break_token: str = "[IMG_BREAK]"
    image_end_token: str = "[IMG_END]"

    @classmethod
    def from_folder(cls, folder: str | Path) -> "PixtralProcessorConfig":
        image, proc = read_processor_files(folder)
        image = {**_IMAGE_DEFAULTS, **image}
        size = size_field(image, "size", f"{folder} image processor", "longest_edge", "height", "width")
        if "longest_edge" not in size and size.get("height") != size.get("width"):
            raise ConfigError(f"{folder}: Pixtral image size must be a longest_edge (or a square), got {size}")
        merge = int(proc.get("spatial_merge_size", 1))
        return cls(patch=int(proc.get("patch_size", 16)) * merge, merge=merge,
                   longest_edge=size.get("longest_edge", size.get("height")),
                   do_resize=bool(image.get("do_resize", True)), resample=int(image["resample"]),
                   norm=pixels.Normalization.from_dict(image),
                   image_token=proc.get("image_token", "[IMG]"),
                   image_break_token=proc.get("image_break_token", "[IMG_BREAK]"),
                   image_end_token=proc.get("image_end_token", "[IMG_END]"))

    def expansion(self, height: int, width: int) -> str:
        """The token string of one [3, height, width] processed image."""
        row = self.image_token * (width // self.patch) + self.image_break_token
        text = row * (height // self.patch)
        return text[: -len(self.image_break_token)] + self.image_end_token


class PixtralProcessor(TypeCProcessor):
    """(prompts with `[IMG]` placeholders, images) -> Pixtral inputs: pixel_values float32
    [M, 3, H_max, W_max] (zero-padded), image_sizes int64 [M, 2]."""

    config_class = PixtralProcessorConfig
    extra_tokens = ("image_break_token", "image_end_token")

    def image(self, src) -> np.ndarray:
        """One image source -> the resized uint8 [h, w, 3] (h, w multiples of the patch).

        Raises:
            DataError: a side is shorter than one patch (see `processors.native`).
        """
        cfg, image = self.config, pixels.load_rgb(src)
        height, width = image.shape[:2]
        if cfg.do_resize:
            height, width = resized_size(height, width, cfg.longest_edge, cfg.patch)
        check_not_below_patch(src, *image.shape[:2], cfg.patch // cfg.merge)  # transformers would blow it up
        if cfg.do_resize and max(image.shape[:2]) > cfg.longest_edge:
            note_resized(src, image.shape[:2], (height, width), f"the {cfg.longest_edge}-px longest edge")
        return pixels.resize(image, height, width, cfg.resample)

    def encode_images(self, groups):
        values = [pixels.to_pixel_values(self.image(src), self.config.norm) for g in groups for src in g]
        sizes = [tuple(v.shape[1:]) for v in values]
        h_max, w_max = max(h for h, _ in sizes), max(w for _, w in sizes)
        batch = torch.zeros(len(values), 3, h_max, w_max, dtype=torch.float32)
        for out, v in zip(batch, values):
            out[:, : v.shape[1], : v.shape[2]] = v
        image_sizes = torch.tensor(sizes, dtype=torch.long)  # [M, 2]
        return {"pixel_values": batch, "image_sizes": image_sizes}, [self.config.expansion(h, w) for h, w in sizes]


def build_processor(folder: str | Path, tokenizer, cfg, merge: int = 1) -> PixtralProcessor:
    """The Pixtral processor builder (a LLaVA folder whose processor_class is PixtralProcessor):
    the folder's own processor files; its `[IMG]` id must be the config's image_token_index and
    its patch the tower's (times the model's spatial merge size `merge`: Mistral 3)."""
    processor = PixtralProcessor.from_folder(folder)
    if processor.image_token_id != cfg.image_token_id:
        raise ConfigError(f"{folder}: the tokenizer's {processor.placeholder} id {processor.image_token_id} != "
                          f"config.json image_token_index {cfg.image_token_id}")
    if processor.config.patch != cfg.vision.patch_size * merge:
        times = f" x spatial_merge_size {merge}" if merge > 1 else ""
        raise ConfigError(f"{folder}: processor patch_size{' x spatial_merge_size' if times else ''} "
                          f"{processor.config.patch} != vision_config patch_size {cfg.vision.patch_size}{times}")
    return processor


def processor_files(cfg, merge: int = 1) -> ProcessorFiles:
    """What a Pixtral folder made by `vlmkit create` carries for PixtralProcessor (and transformers'):
    mistral-community/pixtral-12b's chat template (its text parts are read from "content")."""
    return ProcessorFiles(
        special_tokens=IMAGE_TOKENS,
        processor_config={"processor_class": "PixtralProcessor", "image_token": "[IMG]",
                          "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]",
                          "patch_size": cfg.vision.patch_size, "spatial_merge_size": merge},
        chat_template=bundled_chat_template("pixtral"))


def build_mistral3_processor(folder: str | Path, tokenizer, cfg) -> PixtralProcessor:
    """Mistral 3's processor: PixtralProcessor with `spatial_merge_size` (read from the folder's
    processor_config.json), which resizes to whole merged patches and writes one `[IMG]` per
    merged token: an image of h x w pixels gives h/(P s) rows of w/(P s) `[IMG]`."""
    return build_processor(folder, tokenizer, cfg, merge=cfg.merger.spatial_merge_size)


def mistral3_processor_files(cfg) -> ProcessorFiles:
    """What a Mistral 3 folder made by `vlmkit create` carries (PixtralProcessor with the merge size)
    and the chat template transformers' Mistral 3 converter writes."""
    files = processor_files(cfg, merge=cfg.merger.spatial_merge_size)
    return replace(files, chat_template=bundled_chat_template("mistral3"))
