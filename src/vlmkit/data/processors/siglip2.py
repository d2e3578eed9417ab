"""SigLIP 2 NaFlex processor: images at their own aspect ratio as flattened patches, captions.

Image (equal to transformers' Siglip2ImageProcessorPil; the default, torchvision-backed class cannot
be imported here, see /work/shared/transformers-notes.md), for an image of H x W pixels, patch p and
budget B = max_num_patches:

    s = the largest scale (binary search over [1e-6, 100] to 1e-5) with
        ceil(H s / p) * ceil(W s / p) <= B, each side at least one patch
    RGB uint8 -> bilinear resize to (ceil(H s / p) p, ceil(W s / p) p) -> rescale -> normalise
    -> the h x w patches row-major, each flattened as (row, col, channel): [h w, p * p * 3]

A 40 x 56 image with 8-px patches and B = 16 becomes 24 x 40 pixels: 3 x 5 = 15 patches.
transformers' layout pads every image to B rows: pixel_values float32 [M, B, 3 p p],
pixel_attention_mask int32 [M, B] (1 on the first h w rows), spatial_shapes int64 [M, 2] = (h, w).
`packed=True` gives vlmkit's packed layout instead: pixel_values [sum h w, 3 p p] (no padding) and
spatial_shapes, which `Siglip2TwoTower.encode_image` reads as one block-diagonal sequence.

Text (Siglip2Processor): lowercased (Siglip2Tokenizer adds a Lowercase normaliser to the Gemma
tokenizer), tokenized with the folder's tokenizer.json, truncated and padded to 64 tokens
(`padding="max_length"`, as SigLIP 2 was trained) on the tokenizer's padding side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlmkit.data.image import ImageSource
from vlmkit.data.processors import pixels
from vlmkit.data.processors.common import PromptTokenizer, read_processor_files
from vlmkit.errors import ConfigError, DataError


def _scaled_side(size: int, scale: float, patch: int) -> int:
    """size * scale rounded UP to a multiple of `patch`, at least one patch."""
    return max(patch, math.ceil(size * scale / patch) * patch)


def size_for_max_patches(height: int, width: int, patch: int, max_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """(h', w'), multiples of `patch`, about the image's aspect ratio, (h'/p)(w'/p) <= max_patches.

    The same bisection over the scale as transformers' get_image_size_for_max_num_patches (so the
    sizes agree exactly): keep the largest scale whose patch count fits, stop when the bracket is
    narrower than eps.
    """
    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        count = (_scaled_side(height, mid, patch) / patch) * (_scaled_side(width, mid, patch) / patch)
        lo, hi = (mid, hi) if count <= max_patches else (lo, mid)
    return _scaled_side(height, lo, patch), _scaled_side(width, lo, patch)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[C, H, W] -> [(H/p)(W/p), p * p * C]: patches row-major, each flattened (row, col, channel)."""
    C, H, W = x.shape
    x = x.reshape(C, H // patch, patch, W // patch, patch)  # [C, h, p, w, p]
    return x.permute(1, 3, 2, 4, 0).reshape((H // patch) * (W // patch), -1)  # [h w, p p C]


@dataclass(kw_only=True, frozen=True)
class Siglip2ProcessorConfig:
    """Siglip2ImageProcessor fields (preprocessor_config.json) and Siglip2Processor's text fields."""

    patch_size: int = 16
    max_num_patches: int = 256
    do_resize: bool = True
    resample: int = 2  # PIL bilinear, Siglip2ImageProcessor's default
    norm: pixels.Normalization = pixels.Normalization()
    max_length: int = 64
    lowercase: bool = True

    @classmethod
    def from_dict(cls, image: dict, name: str = "preprocessor_config.json", **text) -> "Siglip2ProcessorConfig":
        """From Siglip2ImageProcessor fields (`text`: max_length / lowercase overrides)."""
        try:
            return cls(patch_size=int(image.get("patch_size", 16)),
                       max_num_patches=int(image.get("max_num_patches", 256)),
                       do_resize=bool(image.get("do_resize", True)), resample=int(image.get("resample", 2)),
                       norm=pixels.Normalization.from_dict(image), **text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: bad SigLIP 2 image processor field: {exc}") from None

    @classmethod
    def from_folder(cls, folder: str | Path, **text) -> "Siglip2ProcessorConfig":
        image, _ = read_processor_files(folder)
        return cls.from_dict(image, str(folder), **text)


class Siglip2Processor:
    """(captions, images) -> the Siglip2Model inputs (see the module doc for the layouts)."""

    def __init__(self, config: Siglip2ProcessorConfig, tokenizer: PromptTokenizer | None = None):
        self.config, self.tokenizer = config, tokenizer

    @classmethod
    def from_folder(cls, folder: str | Path, with_tokenizer: bool = True, **text) -> "Siglip2Processor":
        """The folder's image processor fields and tokenizer.json (`text`: max_length / lowercase)."""
        cfg = Siglip2ProcessorConfig.from_folder(folder, **text)
        tok = PromptTokenizer.from_folder(folder) if with_tokenizer else None
        if tok is not None:  # transformers' truncation=True: the tokenizer's own (special tokens kept)
            tok.tok.enable_truncation(cfg.max_length)
        return cls(cfg, tok)

    def resize(self, src: ImageSource) -> np.ndarray:
        """One image -> uint8 [h p, w p, 3], resized to at most max_num_patches patches (the
        step a training dataset keeps per sample; `patch_batch` finishes a batch of them)."""
        cfg, image = self.config, pixels.load_rgb(src)
        height, width = image.shape[:2]
        p = cfg.patch_size
        if cfg.do_resize:
            return pixels.resize(image, *size_for_max_patches(height, width, p, cfg.max_num_patches), cfg.resample)
        if height % p or width % p or (height // p) * (width // p) > cfg.max_num_patches:
            raise DataError(f"an image of {height} x {width} pixels is not a grid of at most "
                            f"{cfg.max_num_patches} {p}-px patches and do_resize is off")
        return image

    def patch_batch(self, resized: Sequence[np.ndarray], packed: bool = False) -> dict[str, torch.Tensor]:
        """`resize`d uint8 images -> pixel_values, spatial_shapes (+ pixel_attention_mask unless
        `packed`), normalised and patchified (see the module doc for the two layouts)."""
        if not resized:
            raise DataError("no images given")
        p, L = self.config.patch_size, self.config.max_num_patches
        done = [patchify(pixels.to_pixel_values(x, self.config.norm), p) for x in resized]  # M x [n_i, P]
        shapes = torch.tensor([(x.shape[0] // p, x.shape[1] // p) for x in resized], dtype=torch.long)  # [M, 2]
        if packed:
            return {"pixel_values": torch.cat(done), "spatial_shapes": shapes}
        values = torch.zeros(len(done), L, done[0].shape[1], dtype=torch.float32)  # [M, L, P]
        mask = torch.zeros(len(done), L, dtype=torch.int32)  # [M, L]
        for i, x in enumerate(done):
            values[i, :x.shape[0]], mask[i, :x.shape[0]] = x, 1
        return {"pixel_values": values, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def images(self, images: Sequence[ImageSource], packed: bool = False) -> dict[str, torch.Tensor]:
        """Image sources -> pixel_values, spatial_shapes (+ pixel_attention_mask unless `packed`)."""
        return self.patch_batch([self.resize(src) for src in images], packed)

    def text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Captions -> input_ids / attention_mask int64 [B, max_length] (lowercased, truncated, padded)."""
        tok, n = self.tokenizer, self.config.max_length
        if tok is None or tok.pad_id is None:
            raise ConfigError("SigLIP 2 captions need a tokenizer with a pad token (tokenizer_config.json)")
        rows = [tok.encode(t.lower() if self.config.lowercase else t)[:n] for t in texts]
        ids = torch.full((len(rows), n), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for b, row in enumerate(rows):
            cols = slice(n - len(row), n) if tok.padding_side == "left" else slice(0, len(row))
            ids[b, cols], mask[b, cols] = torch.tensor(row, dtype=torch.long), 1
        return {"input_ids": ids, "attention_mask": mask}

    def __call__(self, texts: Sequence[str] | None = None, images: Sequence[ImageSource] | None = None,
                 packed: bool = False) -> dict[str, torch.Tensor]:
        batch = {} if texts is None else self.text(list(texts))
        return batch if images is None else {**batch, **self.images(list(images), packed)}


class NaflexImages:
    """The image side of the two-tower processor (`vlmkit.data.processors.two_tower`) for a
    Siglip2ImageProcessor folder: `to_uint8` resizes one image (per sample, as a training dataset
    keeps it), `batch` packs resized images, `inputs` does both; the inputs are the packed layout
    {"pixel_values" float32 [N, 3 p p], "spatial_shapes" int64 [M, 2]} that
    `Siglip2TwoTower.encode_image(**inputs)` reads."""

    def __init__(self, config: Siglip2ProcessorConfig):
        self.config, self._processor = config, Siglip2Processor(config)

    @classmethod
    def from_dict(cls, d: dict, name: str = "preprocessor_config.json") -> "NaflexImages":
        return cls(Siglip2ProcessorConfig.from_dict(d, name))

    @property
    def nominal_size(self) -> int:
        """Side of a square image that fills the patch budget (synthetic scenes are drawn at it)."""
        return self.config.patch_size * math.isqrt(self.config.max_num_patches)

    def to_uint8(self, image: ImageSource | torch.Tensor) -> torch.Tensor:
        """One image (a source, or a uint8 tensor [3, h, w]) -> resized uint8 [3, h' , w'] (`resize`)."""
        if isinstance(image, torch.Tensor):
            image = np.ascontiguousarray(image.permute(1, 2, 0).numpy())  # [3, h, w] -> [h, w, 3]
        return torch.from_numpy(np.array(self._processor.resize(image))).permute(2, 0, 1).contiguous()

    def batch(self, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """`to_uint8` images [3, h_i, w_i] -> the packed inputs (see the class doc)."""
        return self._processor.patch_batch([i.permute(1, 2, 0).numpy() for i in images], packed=True)

    def inputs(self, images: Sequence[ImageSource]) -> dict[str, torch.Tensor]:
        """Image sources -> the packed inputs (see the class doc)."""
        return self._processor.images(list(images), packed=True)


class NaflexCaptions:
    """Captions of a SigLIP 2 folder for the two-tower processor: `Siglip2Processor.text` (the
    folder's tokenizer.json with its own special tokens and padding side, lowercased), padded to
    the text tower's `max_length` positions (64 in the published checkpoints, as Siglip2Processor)."""

    def __init__(self, folder: str | Path, max_length: int):
        self._processor = Siglip2Processor.from_folder(folder, max_length=max_length)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (input_ids, attention_mask), each int64 [B, max_length]."""
        batch = self._processor.text(list(texts))
        return batch["input_ids"], batch["attention_mask"]


def build_processor(folder: str | Path, tokenizer, cfg) -> Siglip2Processor:
    """The siglip2 family's processor: the folder's own files; its patch size must be the tower's."""
    processor = Siglip2Processor.from_folder(folder)
    if processor.config.patch_size != cfg.vision.patch_size:
        raise ConfigError(f"{folder}: processor patch_size {processor.config.patch_size} != the vision config's "
                          f"{cfg.vision.patch_size}")
    return processor
