"""Mistral 3 (Mistral Small 3.1, transformers' Mistral3ForConditionalGeneration), single-device
plain PyTorch.

Axes: B batch, T tokens, M images in the batch, h_i x w_i patch grid of image i, N = sum h_i w_i
packed patches, s merge size, N' = sum (h_i / s)(w_i / s) image tokens, Dv vision width,
D text width, V vocabulary.

A composition of parts: the packed Pixtral-ViT (`models.parts.pixtral_vit`, images at their own
sizes, one block-diagonal sequence [1, N, Dv]), the hidden state `vision_feature_layer` (every
patch, no class token), the patch merger (`models.parts.patch_merger`: RMSNorm, each s x s block
of an image's grid -> one token, [N', Dv]), the 2-layer GELU connector (`linear_1`, `linear_2`,
no biases) and the decoder from the text config's family record (Mistral: `models/llama`).
The processor writes (h_i / s) rows of (w_i / s) `[IMG]`, rows ended by `[IMG_BREAK]`, the last
by `[IMG_END]`; the `[IMG]` embeddings are replaced by the image tokens in order, unscaled, the
break / end tokens stay text. Plain causal attention, RoPE positions from 0 over non-pad tokens
(as transformers' generate builds them).

Not supported: dropout, several `vision_feature_layer`s (transformers cannot run them either).
"""

import torch
from torch import nn

from vlmkit.models.llava.model import Llava
from vlmkit.models.mistral3.config import Mistral3Config
from vlmkit.models.parts.connectors import Connector
from vlmkit.models.parts.patch_merger import PatchMerger
from vlmkit.models.registry import family_of


class Mistral3(Llava):
    """LLaVA's `forward(input_ids, pixel_values, attention_mask, image_features, image_sizes=...)`
    -> logits [B, T, V] and `hidden_states` (reused: placeholders, causal mask, positions), with
    Mistral 3's parts and `encode_images`."""

    def __init__(self, cfg: Mistral3Config):
        nn.Module.__init__(self)  # not Llava's: its projector reads FeatureSelect, which Mistral 3 has not
        self.cfg = cfg
        self.vision_tower = family_of(cfg.vision).model_class(cfg.vision)
        Dv = cfg.vision.hidden_size
        self.merger = PatchMerger(cfg.merger, Dv)
        self.projector = Connector(cfg.projector, Dv, cfg.text.hidden_size)
        self.language_model = family_of(cfg.text).model_class(cfg.text)

    def encode_images(self, pixel_values, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [M, 3, H_max, W_max] zero-padded, image_sizes [M, 2] (each image's height
        and width in pixels; None: every image fills the batch), or M tensors [3, H_i, W_i]
        -> image tokens [N', D] in the projector dtype, images in order, each row-major."""
        _, sizes = self.vision_tower.padded(pixel_values, image_sizes)
        p = self.cfg.vision.patch_size
        grids = [(h // p, w // p) for h, w in sizes]
        x = self.vision_tower.hidden_states(pixel_values, [self.cfg.vision_feature_layer], image_sizes)[0]
        return self.projector(self.merger(x, grids))  # [1, N, Dv] -> [N', Dv] -> [N', D]
