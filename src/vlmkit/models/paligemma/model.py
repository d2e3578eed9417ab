"""PaliGemma (arXiv:2407.07726) and PaliGemma 2 (arXiv:2412.03555), single-device plain PyTorch.

Axes: B batch, T tokens, M images in the batch (B x images per prompt), N patches per image,
Dv vision width, D text width, V vocabulary.

The model composes `SiglipVisionTower` and `Gemma` (no copies): each image becomes N patch
features, a linear projector maps them to the text width, and they replace the embeddings at the
`<image>` placeholder positions (in order). Image and prefix tokens attend to each other in both
directions, the suffix causally (see `vlmkit.models.common.attention` for a worked example).
Positions are 1-based over non-padding tokens, as in the reference.

Not supported: the MAP head's output (PaliGemma reads all patch tokens), dropout.
"""

import torch
from torch import nn

from vlmkit.models.gemma.model import Gemma
from vlmkit.models.paligemma.config import PaliGemmaConfig
from vlmkit.models.parts.placeholders import ImagePlaceholders, PlaceholderGeneration, positions_from_mask
from vlmkit.models.siglip.model import SiglipVisionTower

__all__ = ["PaliGemma", "positions_from_mask"]


class PaliGemma(ImagePlaceholders, nn.Module):
    def __init__(self, cfg: PaliGemmaConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.projector = nn.Linear(cfg.vision.hidden_size, cfg.text.hidden_size)
        self.language_model = Gemma(cfg.text)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [M, 3, H, W] -> projected image tokens [M, N, D] in the projector dtype.

        The features are not multiplied by sqrt(D): only text embeddings are (the reference
        divides image features by sqrt(D) before a global multiply, which cancels).
        """
        return self.projector(self.vision_tower(pixel_values))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full (uncached) forward, for training and scoring.

        Args:
            input_ids: [B, T] int64 with `<image>` placeholders.
            pixel_values: [M, 3, H, W] float, or pass precomputed `image_features` [M, N, D].
            attention_mask: [B, T] 1 for tokens, 0 for padding (default all ones).
            token_type_ids: [B, T] 0 for image+prefix, 1 for suffix (default all prefix).

        Returns:
            logits [B, T, V] in the model dtype.
        """
        return self.language_model.logits(
            self.hidden_states(input_ids, pixel_values, attention_mask, token_type_ids, image_features)
        )

    def hidden_states(self, input_ids, pixel_values=None, attention_mask=None, token_type_ids=None,
                      image_features=None) -> torch.Tensor:
        """Same arguments as `forward`; returns final hidden states [B, T, D]."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        in_prefix = valid if token_type_ids is None else valid & (token_type_ids == 0)
        x = self.embed_inputs(input_ids, image_features)
        return self.language_model(x, positions_from_mask(attention_mask), valid, in_prefix)


# Image + prefix bidirectional, positions 1-based over tokens (as the reference).
PALIGEMMA_GENERATION = PlaceholderGeneration(prefix_lm=True, position_start=1)
