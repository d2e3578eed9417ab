"""PaliGemma processor: prompts + images (+ target suffixes) -> model inputs.

Each example is laid out as PaliGemma was trained (big_vision; same ids as transformers'
PaliGemmaProcessor):

    <image> x (num_image_tokens * n_images)  <bos>  prefix tokens  "\\n"  |  suffix tokens  <eos>
    token_type_ids:  0 ...................................................  |  1 ...............
    labels:          -100 ................................................  |  suffix ids, <eos>

token_type_ids mark the prefix (attended bidirectionally by the prefix-LM) and the suffix (causal,
trained on). The "\\n" is encoded with the prefix text ("prefix\\n" is one string), which matters
because BPE may merge it with the last prefix character. Padding (either side) gets pad_id,
attention_mask 0, token_type_ids 0 and labels -100.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vlmkit.data.image import ImageSource, preprocess_images, preprocess_images_fast
from vlmkit.data.tokenizer import IMAGE_TOKEN, Tokenizer
from vlmkit.errors import DataError, PromptTooLongError, TokenizerError

IGNORE_INDEX = -100  # label value that cross-entropy skips


def _per_prompt_images(images, n_prompts: int) -> list[list[ImageSource]]:
    """Normalise `images` to one list of image sources per prompt."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) != n_prompts:
        raise DataError(f"got {len(images)} image entries for {n_prompts} prompt(s); pass one image or "
                        "one list of images per prompt")
    groups = [list(x) if isinstance(x, (list, tuple)) else [x] for x in images]
    empty = next((i for i, g in enumerate(groups) if not g), None)
    if empty is not None:
        raise DataError(f"prompt {empty} has no image; PaliGemma needs at least one per prompt")
    return groups


class PaliGemmaProcessor:
    """Turn (prompt, images[, suffix]) examples into PaliGemma model inputs.

    Args:
        tokenizer: a PaliGemma vocabulary (must contain `<image>`, `<bos>`, `<eos>`, `<pad>`).
        image_size: side of the square model input, or (height, width).
        num_image_tokens: `<image>` tokens per image (= vision patches, e.g. 256 for 224 / 14).
        image_mean, image_std: per-channel normalisation (SigLIP: 0.5, 0.5).
        max_length: longest allowed sequence, image tokens included; None = unlimited.
        fast_images: use `preprocess_images_fast` (torch uint8 resize, see its tolerance) instead
            of the exact PIL reference.
    Raises:
        TokenizerError: the tokenizer lacks `<image>` or another token the layout needs.
    """

    # pixel_values[i] is the i-th image alone, encoded on its own: features may be cached per image.
    per_image_pixels = True

    def __init__(self, tokenizer: Tokenizer, image_size: int | tuple[int, int], num_image_tokens: int,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5),
                 max_length: int | None = None, fast_images: bool = False):
        if num_image_tokens <= 0:
            raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.max_length = max_length
        self.fast_images = fast_images
        # Resolve now so that a tokenizer without these fails at construction, with one line.
        self.image_token_id = tokenizer.image_token_id
        self.bos_id, self.eos_id, self.pad_id = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id

    def _example(self, prompt: str, n_images: int, suffix: str | None) -> tuple[list[int], list[int]]:
        """(input_ids, token_type_ids) of one example, unpadded."""
        if IMAGE_TOKEN in prompt or (suffix is not None and IMAGE_TOKEN in suffix):
            raise TokenizerError(f"text contains the reserved token {IMAGE_TOKEN}; pass images via `images`")
        prefix = [self.image_token_id] * (self.num_image_tokens * n_images) + [self.bos_id]
        prefix += self.tokenizer.encode(prompt + "\n")
        target = [] if suffix is None else self.tokenizer.encode(suffix) + [self.eos_id]
        return prefix + target, [0] * len(prefix) + [1] * len(target)

    def _check_length(self, index: int, ids: list[int], n_images: int) -> None:
        if self.max_length is not None and len(ids) > self.max_length:
            n_img = self.num_image_tokens * n_images
            raise PromptTooLongError(f"example {index} needs {len(ids)} tokens ({n_img} image + "
                                     f"{len(ids) - n_img} text) but max_length is {self.max_length}")

    def pixel_values(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """float32 [N, 3, H, W] for N image sources, with this processor's size/mean/std."""
        fn = preprocess_images_fast if self.fast_images else preprocess_images
        return fn(list(images), self.image_size, self.image_mean, self.image_std)

    def __call__(self, prompts: str | Sequence[str], images, suffixes: str | Sequence[str] | None = None,
                 padding_side: str = "left", return_labels: bool | None = None) -> dict[str, torch.Tensor]:
        """Build a padded batch.

        Args:
            prompts: B prompts (or one string).
            images: one entry per prompt: an image source or a list of them (several images per
                prompt put their `<image>` blocks one after another, in order); None: text-only
                examples (no image tokens, no pixel_values), e.g. a data mixture's text rows.
            suffixes: B target texts for training (or one string), or None for inference.
            padding_side: "left" (generation: all prompts end at the last column) or "right".
            return_labels: add `labels`; default: when suffixes are given.
        Returns:
            input_ids, attention_mask, token_type_ids (and labels): int64 [B, T];
            pixel_values: float32 [B * n_images, 3, H, W] in prompt order (absent for images=None).
        Raises:
            DataError: mismatched numbers of prompts, images and suffixes.
            PromptTooLongError: an example is longer than `max_length`.
            ImageError: an image cannot be loaded.
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise DataError("no prompts given")
        groups = [[] for _ in prompts] if images is None else _per_prompt_images(images, len(prompts))
        if suffixes is not None:
            suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
            if len(suffixes) != len(prompts):
                raise DataError(f"got {len(suffixes)} suffixes for {len(prompts)} prompts")
        examples = []
        for i, (prompt, group) in enumerate(zip(prompts, groups)):
            ids, types = self._example(prompt, len(group), None if suffixes is None else suffixes[i])
            self._check_length(i, ids, len(group))
            examples.append((ids, types))
        batch = self._pad(examples, padding_side)
        if return_labels or (return_labels is None and suffixes is not None):
            labels = batch["input_ids"].clone()
            labels[batch["token_type_ids"] == 0] = IGNORE_INDEX  # prefix and padding
            batch["labels"] = labels
        if images is not None:
            batch["pixel_values"] = self.pixel_values([img for group in groups for img in group])
        return batch

    def _pad(self, examples: list[tuple[list[int], list[int]]], side: str) -> dict[str, torch.Tensor]:
        """Pad to the longest example: pad_id / mask 0 / type 0 on `side`."""
        longest = max(len(ids) for ids, _ in examples)
        out = {
            "input_ids": torch.full((len(examples), longest), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(examples), longest, dtype=torch.long),
            "token_type_ids": torch.zeros(len(examples), longest, dtype=torch.long),
        }
        for b, (ids, types) in enumerate(examples):
            cols = slice(longest - len(ids), longest) if side == "left" else slice(0, len(ids))
            out["input_ids"][b, cols] = torch.tensor(ids, dtype=torch.long)
            out["attention_mask"][b, cols] = 1
            out["token_type_ids"][b, cols] = torch.tensor(types, dtype=torch.long)
        return out

    def decode(self, ids, skip_special_tokens: bool = True) -> str | list[str]:
        """Text of a 1-D id sequence, or a list of texts for a 2-D tensor / list of sequences."""
        nested = ids.dim() == 2 if isinstance(ids, torch.Tensor) else (
            len(ids) > 0 and isinstance(ids[0], (list, tuple, torch.Tensor)))
        if nested:
            return [self.tokenizer.decode(row, skip_special_tokens) for row in ids]
        return self.tokenizer.decode(ids, skip_special_tokens)
