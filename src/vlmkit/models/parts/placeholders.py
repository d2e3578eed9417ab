"""Placing image features in the prompt: the k-th `<image>` placeholder takes the k-th feature.

Axes: B batch, T tokens, M images in the batch, N tokens per image, D text width.

Shared by every Type C family whose processor expands each image into N placeholder tokens
(PaliGemma, LLaVA): the placeholders' embeddings are replaced by the image features in order,
row-major over the flattened batch, and the features are not rescaled (transformers 5 applies
any embedding scale, e.g. Gemma's sqrt(D), inside the embedding layer, so it never reaches the
image features).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.models.common.contracts import DecoderInputs


def merge_image_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    image_token_id: int,
    image_features: torch.Tensor | None,
) -> torch.Tensor:
    """input_ids [B, T]; image_features [M, N, D], or [sum N_i, D] for images of different
    lengths (LLaVA-NeXT), or None -> embeddings [B, T, D].

    `embed` maps ids to text embeddings. Placeholder ids are embedded as id 0 before being
    overwritten, so an image token id outside the text vocabulary is allowed (PaliGemma's is).
    """
    is_image = input_ids == image_token_id
    x = embed(input_ids.masked_fill(is_image, 0))
    n_slots = int(is_image.sum())
    if image_features is None:
        if n_slots:
            raise ValueError(f"{n_slots} <image> tokens in the input but no images were given")
        return x
    feats = image_features.reshape(-1, image_features.shape[-1])  # [M * N, D]
    if feats.shape[0] != n_slots:
        layout = (f" ({image_features.shape[0]} images x {image_features.shape[1]} patches)"
                  if image_features.dim() == 3 else "")  # 2-D: packed, images of different lengths
        raise ValueError(f"{n_slots} <image> tokens in the input but the images give {feats.shape[0]} features{layout}")
    return x.masked_scatter(is_image[..., None], feats.to(x.dtype))


class ImagePlaceholders:
    """Mixin for a VLM with `cfg.image_token_id` and a `language_model` that has `embed(ids)`."""

    def embed_inputs(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """input_ids [B, T]; image_features [M, N, D] or None -> embeddings [B, T, D].

        The k-th `<image>` token of the flattened batch (row-major) takes the k-th feature row.
        """
        return merge_image_features(self.language_model.embed, input_ids, self.cfg.image_token_id, image_features)


def positions_from_mask(attention_mask: torch.Tensor, start: int = 1) -> torch.Tensor:
    """attention_mask [B, T] (1 = token) -> RoPE positions [B, T] int64, counted over tokens.

    The first token of each row gets `start` (PaliGemma counts from 1, transformers' generate
    for decoder-only models from 0), so left padding does not shift a prompt's positions, which
    is what makes batched output equal one-by-one output. Padding slots get `start` (never
    attended to).
    """
    pos = attention_mask.long().cumsum(-1) + (start - 1)
    return pos.masked_fill(attention_mask == 0, start)


@dataclass(frozen=True)
class PlaceholderGeneration:
    """The `GenerationAdapter` of every Type C family whose images fill `<image>` placeholders
    (the model has `encode_images`, `embed_inputs`, `language_model` and `cfg.text`).

    prefix_lm: the image + prefix block (token_type_ids 0, or the whole prompt without them) is
        bidirectional (PaliGemma); False is plain causal attention (LLaVA, SmolVLM, InternVL).
    position_start: the first token's RoPE position (PaliGemma 1, transformers' decoder-only 0).
    image_inputs: the batch entries passed to `model.encode_images`: the first (the pixels)
        positionally, the others by name when the batch has them (LLaVA-NeXT's original
        `image_sizes`, Pixtral's per-image sizes).
    """

    prefix_lm: bool = False
    position_start: int = 0
    image_inputs: tuple[str, ...] = ("pixel_values",)

    def context_length(self, model: nn.Module) -> int:
        return model.cfg.text.max_position_embeddings

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.language_model

    def prepare(self, model: nn.Module, batch: dict) -> DecoderInputs:
        """batch: input_ids / attention_mask (/ token_type_ids) [B, T], and pixel_values
        [M, 3, H, W] (with the other `image_inputs`) or image_features [M, N, D] (either may be
        absent for a text-only prompt)."""
        ids, mask, tt = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        feats = batch.get("image_features")
        if feats is None and batch.get("pixel_values") is not None:
            pixels, *others = self.image_inputs
            feats = model.encode_images(batch[pixels], **{k: batch[k] for k in others if batch.get(k) is not None})
        if not self.prefix_lm:
            in_prefix = torch.zeros_like(mask, dtype=torch.bool)
        else:
            in_prefix = mask.bool() if tt is None else mask.bool() & (tt == 0)
        positions = positions_from_mask(mask, start=self.position_start)
        return DecoderInputs(model.embed_inputs(ids, feats), mask, in_prefix, positions)
