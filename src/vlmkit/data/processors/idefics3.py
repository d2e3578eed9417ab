"""Idefics3 / SmolVLM processor: longest-edge resize, N x M tiles + a global image.

Image (transformers' Idefics3ImageProcessor = SmolVLMImageProcessor, PIL backend), M = max_image_size:

1. resize so the longest edge is size.longest_edge (the other side floored, then made even; capped
   at 4096), LANCZOS by default;
2. with do_image_splitting: resize up to multiples of M (aspect kept, rounded up), cut into
   rows x cols tiles of M x M in row-major order, append the whole image resized to M x M (the
   global image); an image already within M x M is one frame with rows = cols = 0;
   without splitting: one M x M frame;
3. rescale + normalise; pad every frame to the largest frame of the batch and every prompt to the
   most frames of any prompt (zeros).

pixel_values: float32 [B, max_frames, 3, H, W] (per prompt); pixel_attention_mask: int64
[B, max_frames, H, W], 1 on real pixels.

Text, per `<image>` (L = image_seq_len, F = `<fake_token_around_image>`):

    split:   F<row_1_col_1><image>*L F<row_1_col_2><image>*L ... "\\n"   (one line per row)
             "\\n" F<global-img><image>*L F
    single:  F<global-img><image>*L F
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.processor_files import ProcessorFiles, bundled_chat_template
from vlmkit.data.processors import pixels
from vlmkit.data.processors.common import PromptTokenizer, TypeCProcessor, read_processor_files, size_field
from vlmkit.errors import CheckpointError, DataError

MAX_IMAGE_SIDE = 4096  # transformers' absolute cap on the resized longest edge
FAKE, GLOBAL, IMAGE = "<fake_token_around_image>", "<global-img>", "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"
MAX_GRID = 6  # the published tokenizers' <row_r_col_c> tokens (transformers' processor looks up 6 x 6)


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(H, W) with the longest side = `longest`, the other floored and made even, capped at 4096."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIDE:
        width, height = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE / aspect)
    elif height > width and height > MAX_IMAGE_SIDE:
        height, width = MAX_IMAGE_SIDE, int(MAX_IMAGE_SIDE * aspect)
    return max(height, 1), max(width, 1)


def tile_multiple_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `tile`, the long side first (aspect carried over)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    return height, width


@dataclass(kw_only=True, frozen=True)
class Idefics3ProcessorConfig:
    """Idefics3ImageProcessor + Idefics3Processor fields (SmolVLM writes the same ones)."""

    longest_edge: int
    max_image_size: int
    image_seq_len: int
    do_resize: bool = True
    do_image_splitting: bool = True
    resample: int = 1  # PIL LANCZOS
    norm: pixels.Normalization = pixels.Normalization()
    image_token: str = IMAGE
    fake_token: str = FAKE
    global_token: str = GLOBAL

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Idefics3ProcessorConfig":
        image, proc = read_processor_files(folder)
        name = f"{folder} image processor"
        return cls(longest_edge=size_field(image, "size", name, "longest_edge")["longest_edge"],
                   max_image_size=size_field(image, "max_image_size", name, "longest_edge")["longest_edge"],
                   image_seq_len=int(proc.get("image_seq_len", 169)),
                   do_resize=bool(image.get("do_resize", True)),
                   do_image_splitting=bool(image.get("do_image_splitting", True)),
                   resample=int(image.get("resample", 1)), norm=pixels.Normalization.from_dict(image))


def split_frames(image: np.ndarray, cfg: Idefics3ProcessorConfig) -> tuple[list[np.ndarray], int, int]:
    """uint8 [h, w, 3] -> (frames, rows, cols): tiles in row-major order + the global image."""
    if cfg.do_resize:
        image = pixels.resize(image, *longest_edge_size(*image.shape[:2], cfg.longest_edge), cfg.resample)
    m = cfg.max_image_size
    if not cfg.do_image_splitting:
        return [pixels.resize(image, m, m, cfg.resample)], 0, 0
    image = pixels.resize(image, *tile_multiple_size(*image.shape[:2], m), cfg.resample)
    h, w = image.shape[:2]
    if h <= m and w <= m:
        return [image], 0, 0
    rows, cols = (h - m) // m + 1, (w - m) // m + 1
    tiles = [image[r * m:(r + 1) * m, c * m:(c + 1) * m] for r in range(rows) for c in range(cols)]
    return tiles + [pixels.resize(image, m, m, cfg.resample)], rows, cols


def image_prompt(rows: int, cols: int, seq_len: int) -> str:
    """The text one `<image>` expands to (see the module docstring)."""
    run = IMAGE * seq_len
    if rows == 0 and cols == 0:
        return f"{FAKE}{GLOBAL}{run}{FAKE}"
    lines = "".join("".join(f"{FAKE}<row_{r}_col_{c}>{run}" for c in range(1, cols + 1)) + "\n"
                    for r in range(1, rows + 1))
    return f"{lines}\n{FAKE}{GLOBAL}{run}{FAKE}"


def pad_frames(frames: Sequence[Sequence[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-prompt lists of [3, h, w] frames -> pixel_values [B, F, 3, H, W] + pixel_attention_mask."""
    all_frames = [f for group in frames for f in group]
    height, width = max(f.shape[1] for f in all_frames), max(f.shape[2] for f in all_frames)
    most = max(len(group) for group in frames)
    values = torch.zeros(len(frames), most, 3, height, width, dtype=torch.float32)
    mask = torch.zeros(len(frames), most, height, width, dtype=torch.long)
    for b, group in enumerate(frames):
        for i, frame in enumerate(group):
            values[b, i, :, : frame.shape[1], : frame.shape[2]] = frame
            mask[b, i, : frame.shape[1], : frame.shape[2]] = 1
    return {"pixel_values": values, "pixel_attention_mask": mask}


class Idefics3Processor(TypeCProcessor):
    """(prompts with `<image>` placeholders, images) -> Idefics3 / SmolVLM inputs: pixel_values float32
    [B, F, 3, H, W] and pixel_attention_mask int64 [B, F, H, W] (F = most frames of any prompt).
    An image needing more tiles than the tokenizer has `<row_r_col_c>` tokens for is a DataError."""

    config_class = Idefics3ProcessorConfig
    extra_tokens = ("fake_token", "global_token")

    def _check_grid(self, index: int, rows: int, cols: int) -> None:
        """Each tile is named by a `<row_r_col_c>` token; a grid beyond the vocabulary's is refused."""
        if rows and not self.tokenizer.has_token(f"<row_{rows}_col_{cols}>"):
            raise DataError(f"image {index} splits into {rows}x{cols} tiles but the tokenizer has no "
                            f"<row_{rows}_col_{cols}> token; lower size.longest_edge")

    def encode_images(self, groups):
        expansions, frames = [], []
        for group in groups:
            frames.append([])
            for src in group:
                tiles, rows, cols = split_frames(pixels.load_rgb(src), self.config)
                self._check_grid(len(expansions), rows, cols)
                frames[-1] += [pixels.to_pixel_values(t, self.config.norm) for t in tiles]
                expansions.append(image_prompt(rows, cols, self.config.image_seq_len))
        return pad_frames(frames), expansions


def build(folder: str | Path, tokenizer, cfg) -> Idefics3Processor:
    """The idefics3 family's processor builder (its registry record's `processor`): the folder's
    processor files and tokenizer.json. A folder without `image_seq_len` gets the model's tokens
    per frame; one that disagrees with the model, or whose `<image>` id is not the model's, is a
    CheckpointError (`tokenizer`, vlmkit's own, is not needed: the prompt tokenizer reads the folder)."""
    image, proc = read_processor_files(folder)
    config = Idefics3ProcessorConfig.from_folder(folder)
    if "image_seq_len" not in proc and "image_seq_len" not in image:
        config = replace(config, image_seq_len=cfg.num_image_tokens)
    elif "image_seq_len" not in proc:
        config = replace(config, image_seq_len=int(image["image_seq_len"]))
    if config.image_seq_len != cfg.num_image_tokens:
        raise CheckpointError(f"{folder}: processor image_seq_len {config.image_seq_len} != the model's "
                              f"{cfg.num_image_tokens} tokens per frame")
    return Idefics3Processor(config, PromptTokenizer.from_folder(folder)).check_image_token(folder, cfg)


def processor_files(cfg) -> ProcessorFiles:
    """What an Idefics3 / SmolVLM folder made by `vlmkit create` carries: the image and tile tokens
    and chat markers of the published SmolVLM tokenizers (`<row_r_col_c>` up to 6 x 6), the
    processor named after the config's model_type with the model's tokens per frame, and
    SmolVLM-Instruct's chat template."""
    tiles = tuple(f"<row_{r}_col_{c}>" for r in range(1, MAX_GRID + 1) for c in range(1, MAX_GRID + 1))
    name = {"idefics3": "Idefics3Processor", "smolvlm": "SmolVLMProcessor"}[cfg.hf_model_type]
    return ProcessorFiles(
        special_tokens=(FAKE, IMAGE, END_OF_UTTERANCE, GLOBAL, "<|im_start|>", *tiles),
        processor_config={"processor_class": name, "image_seq_len": cfg.num_image_tokens},
        chat_template=bundled_chat_template("smolvlm"))
