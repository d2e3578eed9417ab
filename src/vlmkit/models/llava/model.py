"""LLaVA (arXiv:2304.08485; LLaVA-1.5, arXiv:2310.03744), single-device plain PyTorch.

Axes: B batch, T tokens, M images in the batch, P tower positions (N patches + class token),
N image tokens per image, Dv vision width, D text width, V vocabulary.

A composition of parts, nothing of its own: the CLIP tower (`SiglipVisionTower` with CLIP's
switches), feature selection (`vision_feature_layer`, by default the second-to-last block, class
token dropped: N = (image_size / patch_size)^2), the 2-layer GELU connector, and the decoder.
The tower is built from its config's family record, so Pixtral's packed `PixtralVisionTower`
(per-image `image_sizes`, features [1, sum_i N_i, D]) fills the same slot (docs/pixtral.md).
Image features replace the `<image>` placeholder embeddings in order, unscaled. Attention is
plain causal over the whole prompt (no prefix-LM block, unlike PaliGemma) and RoPE positions
count from 0 over non-padding tokens, as transformers' generate builds them.

Not supported: dropout. LLaVA-NeXT ("anyres" tiles, `image_newline`) builds on this in models/llava_next.
"""

import torch
from torch import nn

from vlmkit.models.llava.config import LlavaConfig
from vlmkit.models.parts.connectors import Connector
from vlmkit.models.parts.placeholders import ImagePlaceholders, positions_from_mask
from vlmkit.models.parts.vision import select_image_features
from vlmkit.models.registry import family_of


class Llava(ImagePlaceholders, nn.Module):
    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = family_of(cfg.vision).model_class(cfg.vision)
        self.projector = Connector(cfg.projector, cfg.features.width(cfg.vision.hidden_size), cfg.text.hidden_size)
        self.language_model = family_of(cfg.text).model_class(cfg.text)

    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [M, 3, H, W] -> image tokens [M, N, D] in the projector dtype.

        A native-resolution tower (Pixtral) takes the images padded to the largest, with
        `image_sizes` [M, 2] (height, width in pixels), and gives them packed: [1, sum_i N_i, D].
        """
        inputs = {} if image_sizes is None else {"image_sizes": image_sizes}
        return self.projector(select_image_features(self.vision_tower, pixel_values, self.cfg.features, **inputs))

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        **image_inputs: torch.Tensor,
    ) -> torch.Tensor:
        """Full (uncached) forward, for training and scoring.

        Args:
            input_ids: [B, T] int64 with `num_image_tokens` `<image>` placeholders per image.
            pixel_values: [M, 3, H, W] float, or pass precomputed `image_features` [M, N, D].
            attention_mask: [B, T] 1 for tokens, 0 for (left) padding (default all ones).
            image_inputs: what else `encode_images` takes with pixel_values (`image_sizes`: LLaVA-NeXT's
                original sizes, Pixtral's per-image sizes).

        Returns:
            logits [B, T, V] in the model dtype.
        """
        return self.language_model.logits(
            self.hidden_states(input_ids, pixel_values, attention_mask, image_features, **image_inputs))

    def hidden_states(self, input_ids, pixel_values=None, attention_mask=None, image_features=None,
                      **image_inputs) -> torch.Tensor:
        """Same arguments as `forward`; returns final hidden states [B, T, D]."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, **image_inputs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        x = self.embed_inputs(input_ids, image_features)
        causal = torch.zeros_like(valid)  # no bidirectional prefix block
        return self.language_model(x, positions_from_mask(attention_mask, start=0), valid, causal)
