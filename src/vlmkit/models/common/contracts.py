"""What the engines ask of a family's model: the generation contract and the caption format.

Axes: B batch, T prompt tokens, S cache slots, D decoder width, V vocabulary.

These are the only family-facing interfaces of `vlmkit.generation` and `vlmkit.training`; a family
provides them (its `GenerationAdapter` in its registry record, `TextFormat` as its image-text
model's `text_format`), and the engines never test which family a model is.
"""

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass
class DecoderInputs:
    """A processed, left-padded prompt batch as the decoder consumes it.

    embeds: [B, T, D] input embeddings (image features already in place), model dtype.
    attention_mask: [B, T] 1 for tokens, 0 for (left) padding.
    in_prefix: [B, T] bool, the bidirectional block (image + prefix; all False for a causal LM).
    positions: [B, T] int64 RoPE positions ([3, B, T] for an M-RoPE decoder, Qwen2-VL).
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    in_prefix: torch.Tensor
    positions: torch.Tensor


class CachedDecoder(Protocol):
    """The static-KV-cache decoder contract of `vlmkit.generation.decode` (Gemma implements it)."""

    def setup_caches(self, batch_size: int, max_len: int, dtype: torch.dtype, device=None) -> None: ...

    def clear_caches(self) -> None: ...

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, embeds, positions, key_valid, in_prefix, slots=None) -> torch.Tensor: ...


class GenerationAdapter(Protocol):
    """How one decoder-based family turns a processor batch into decoder inputs."""

    def context_length(self, model: nn.Module) -> int:
        """Positions the decoder has (prompt + new tokens must fit)."""
        ...

    def decoder(self, model: nn.Module) -> CachedDecoder:
        """The module the engine prefills and decodes with."""
        ...

    def prepare(self, model: nn.Module, batch: dict) -> DecoderInputs:
        """`batch` as the family's processor returns it (pixel_values or precomputed image_features)."""
        ...


@dataclass(frozen=True)
class TextFormat:
    """How captions are laid out for an image-text model's text side.

    max_len: token positions (longer captions are cut, keeping their final EOS).
    bos: start each caption with BOS (CoCa) or not (SigLIP: caption then EOS).
    pad_to_max: pad every batch to `max_len` (a tower that pools the last position must see the
        same padding in training and inference) rather than to the longest row.
    """

    max_len: int
    bos: bool
    pad_to_max: bool
