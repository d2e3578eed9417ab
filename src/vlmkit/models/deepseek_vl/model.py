"""DeepSeek-VL (arXiv:2403.05525), as transformers' DeepseekVLForConditionalGeneration; single-device
plain PyTorch.

Axes: B batch, T tokens, M images in the batch, N image tokens per image (the tower's patches),
Dv vision width, D text width, V vocabulary.

A composition of parts, nothing of its own: the SigLIP tower's last hidden state (post-LayerNormed,
every patch token: transformers reads `last_hidden_state`, so the MAP head's weights are loaded but
unused), the aligner (`Connector`: linear -> exact GELU -> linear), and the decoder of the text
config's family (Llama for the published checkpoints). Image features replace the
`<image_placeholder>` embeddings in order; attention is plain causal and RoPE positions count
from 0 over non-padding tokens, as in LLaVA, whose forward this model shares.

The hybrid variant (SAM-B high-resolution tower, model_type "deepseek_vl_hybrid") is hybrid.py.
Not supported: dropout.
"""

import torch
from torch import nn

from vlmkit.models.deepseek_vl.config import DeepseekVLConfig
from vlmkit.models.llava.model import Llava
from vlmkit.models.parts.connectors import Connector
from vlmkit.models.parts.placeholders import ImagePlaceholders
from vlmkit.models.registry import family_of
from vlmkit.models.siglip.model import SiglipVisionTower


class DeepseekVL(ImagePlaceholders, nn.Module):
    def __init__(self, cfg: DeepseekVLConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.aligner = Connector(cfg.aligner, cfg.vision.hidden_size, cfg.text.hidden_size)
        self.language_model = family_of(cfg.text).model_class(cfg.text)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [M, 3, H, W] -> image tokens [M, N, D] in the aligner dtype."""
        return self.aligner(self.vision_tower(pixel_values))  # [M, N, Dv] -> [M, N, D]

    # LLaVA's forward is written against this same contract (`encode_images`, `embed_inputs`,
    # `language_model`): input_ids [B, T], pixel_values [M, 3, H, W] or image_features [M, N, D],
    # attention_mask [B, T] -> logits [B, T, V] / hidden states [B, T, D].
    forward = Llava.forward
    hidden_states = Llava.hidden_states
