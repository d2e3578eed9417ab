"""InternVL (arXiv:2312.14238; InternVL 2.5 arXiv:2412.05271, InternVL3 arXiv:2504.10479) as
transformers' InternVLForConditionalGeneration computes it; single-device plain PyTorch.

Axes: B batch, T tokens, M tiles in the batch (all images' tiles, in order), P tower positions
(N patches + class token), N' image tokens per tile, Dv vision width, D text width, V vocabulary.

A composition of parts: the InternViT tower (`models.parts.intern_vit`), feature selection (one
layer; -1 = the tower's `last_hidden_state`, class token dropped), the connector (pixel shuffle
by 2 -> LayerNorm -> linear -> GELU -> linear: N' = N / 4) and the decoder named by the text
config's family record (Qwen2 for InternVL 2.5 / 3). The processor cuts each image into tiles
(+ a thumbnail) and writes `<img>` + N' x tiles `<IMG_CONTEXT>` + `</img>`; each tile is encoded
on its own, and the tiles' tokens replace the `<IMG_CONTEXT>` embeddings in order. Attention is
causal over the whole prompt; RoPE positions count from 0 over non-padding tokens.

Not supported: video frames (same tiles, other prompt), dropout.
"""

import torch
from torch import nn

from vlmkit.models.internvl.config import InternVLConfig
from vlmkit.models.parts.connectors import Connector
from vlmkit.models.parts.intern_vit import InternVisionTower
from vlmkit.models.parts.placeholders import ImagePlaceholders, positions_from_mask
from vlmkit.models.registry import family_of


class InternVL(ImagePlaceholders, nn.Module):
    def __init__(self, cfg: InternVLConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = InternVisionTower(cfg.vision)
        self.projector = Connector(cfg.projector, cfg.vision.hidden_size, cfg.text.hidden_size)
        self.language_model = family_of(cfg.text).model_class(cfg.text)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [M, 3, H, W] -> [M, N, Dv]: the configured layer without the class token.

        Layer -1 is `forward` (with the tower's final norm, if any), as transformers reads
        `last_hidden_state` for -1 and `hidden_states[i]` otherwise.
        """
        layer = self.cfg.features.vision_feature_layer
        tower = self.vision_tower
        x = tower(pixel_values) if layer == -1 else tower.hidden_states(pixel_values, [layer])[0]
        return x[:, 1:]  # [M, N, Dv]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [M, 3, H, W] (tiles) -> image tokens [M, N', D] in the projector dtype."""
        return self.projector(self.vision_features(pixel_values))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Full (uncached) forward, for training and scoring.

        Args:
            input_ids: [B, T] int64 with `num_image_tokens` `<IMG_CONTEXT>` ids per tile.
            pixel_values: [M, 3, H, W] float tiles, or precomputed `image_features` [M, N', D].
            attention_mask: [B, T] 1 for tokens, 0 for (left) padding (default all ones).

        Returns:
            logits [B, T, V] in the model dtype.
        """
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embed_inputs(input_ids, image_features)
        causal = torch.zeros_like(attention_mask, dtype=torch.bool)  # no bidirectional prefix block
        h = self.language_model(x, positions_from_mask(attention_mask, start=0), attention_mask.bool(), causal)
        return self.language_model.logits(h)
