"""Idefics3 (arXiv:2408.12637) and SmolVLM (arXiv:2504.05299), single-device plain PyTorch.

Axes: B batch, F frames per prompt (tiles + global image, padded to the most of any prompt),
M real frames in the batch, H x W frame pixels, N image tokens per frame, T tokens, D text width.

A composition of parts, nothing of its own: the SigLIP tower with bucketed positions and a patch
mask (`bucket_positions`), the pixel-shuffle + linear connector (`connector.modality_projection`),
and the decoder of the text config's family (Llama / SmolLM2). The processor sends every frame
of a prompt (row-major tiles, then the global image) as `pixel_values` [B, F, 3, H, W] with
all-zero padding frames; as transformers, a frame whose pixels are all 0 is padding and is not
encoded, and the remaining frames' features fill the `<image>` tokens in order, unscaled.
Attention is plain causal over the prompt; RoPE positions count from 0 over non-padding tokens,
as transformers' generate builds them.

Not supported: video inputs (SmolVLM2's frame sampling), dropout.
"""

import torch
from torch import nn

from vlmkit.models.idefics3.config import Idefics3Config
from vlmkit.models.parts.connectors import Connector
from vlmkit.models.parts.placeholders import ImagePlaceholders, positions_from_mask
from vlmkit.models.registry import family_of
from vlmkit.models.siglip.model import SiglipVisionTower


def patch_mask_from_pixels(pixel_mask: torch.Tensor, patch: int) -> torch.Tensor:
    """pixel_mask [M, H, W] (1 = real pixel) -> [M, H / patch, W / patch] bool: a patch is real
    if any of its pixels is (transformers' unfold + sum > 0; a partial last patch is dropped)."""
    M, H, W = pixel_mask.shape
    h, w = H // patch, W // patch
    blocks = pixel_mask[:, : h * patch, : w * patch].reshape(M, h, patch, w, patch)  # [M, h, p, w, p]
    return blocks.sum(dim=(2, 4)) > 0


class Idefics3(ImagePlaceholders, nn.Module):
    def __init__(self, cfg: Idefics3Config):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.connector = Connector(cfg.connector, cfg.vision.hidden_size, cfg.text.hidden_size)
        self.language_model = family_of(cfg.text).model_class(cfg.text)

    def encode_images(self, pixel_values: torch.Tensor,
                      pixel_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [B, F, 3, H, W] (or [M, 3, H, W]) float; pixel_attention_mask [B, F, H, W]
        (or [M, H, W]), 1 on real pixels, default all ones -> image tokens [M, N, D] of the real
        (not all-zero) frames, in order, in the connector's dtype."""
        frames = pixel_values.reshape(-1, *pixel_values.shape[-3:]).to(self.connector.linear_1.weight.dtype)
        real = frames.flatten(1).ne(0).any(dim=1)  # [B * F]; NaN counts as real, as in transformers
        if self.cfg.keep_first_frame and not bool(real.any()):
            real[0] = True
        frames = frames[real]  # [M, 3, H, W]
        if frames.shape[0] == 0:  # only padding: no features (the tower does not take an empty batch)
            return frames.new_zeros(0, self.cfg.num_image_tokens, self.cfg.text.hidden_size)
        patch_mask = None
        if pixel_attention_mask is not None:
            mask = pixel_attention_mask.reshape(-1, *pixel_attention_mask.shape[-2:])[real]  # [M, H, W]
            patch_mask = patch_mask_from_pixels(mask, self.cfg.vision.patch_size)
        return self.connector(self.vision_tower(frames, patch_mask))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full (uncached) forward, for training and scoring.

        Args:
            input_ids: [B, T] int64 with `num_image_tokens` `<image>` tokens per real frame.
            pixel_values / pixel_attention_mask: as `encode_images`, or pass precomputed
                `image_features` [M, N, D].
            attention_mask: [B, T] 1 for tokens, 0 for (left) padding (default all ones).

        Returns:
            logits [B, T, V] in the model dtype.
        """
        return self.language_model.logits(
            self.hidden_states(input_ids, pixel_values, attention_mask, pixel_attention_mask, image_features))

    def hidden_states(self, input_ids, pixel_values=None, attention_mask=None, pixel_attention_mask=None,
                      image_features=None) -> torch.Tensor:
        """Same arguments as `forward`; returns final hidden states [B, T, D]."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, pixel_attention_mask)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        x = self.embed_inputs(input_ids, image_features)
        causal = torch.zeros_like(mask, dtype=torch.bool)  # no bidirectional prefix block
        return self.language_model(x, positions_from_mask(mask, start=0), mask.bool(), causal)
