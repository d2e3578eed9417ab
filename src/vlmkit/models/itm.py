"""Image-text matching (ITM) with contrastive hard negatives, as in ALBEF (arXiv:2107.07651) and
BLIP (arXiv:2201.12086). Plain PyTorch, single device.

Axes: B batch of matching pairs, M = 3B scored pairs, E embedding width, W fused width.

ITM is binary classification of (image, text) pairs as match / no match (2-way logits, class 1 =
match). Each step scores the B positive pairs plus, for every image, one negative text and, for
every text, one negative image, drawn with probability softmax(similarity) over the non-positive
candidates: hard negatives (similar, yet wrong) are the informative ones.

Fused representations (what the classifier reads):
- CoCa: the multimodal decoder's output at the CLS position (`CoCa.fuse`): the CLS token has
  attended to the whole caption in the unimodal decoder, and the multimodal layers add
  cross-attention to the image, so it is a joint image-text feature. Use `ItmHead`.
- Two-tower models (SigLIP/CLIP) have no cross-modal layer, so `PairItmHead` fuses the two
  pooled embeddings itself: an MLP over [u, v, u * v, |u - v|] (the InferSent matching
  features; the product and difference expose agreement per dimension, which a linear layer on
  [u, v] alone cannot express).

This module holds the heads (model parts) and `ItmHeadConfig`, which says which head an
image-text model takes (its `itm_head_config` property) and is saved beside a trained head so it
can be rebuilt; drawing negatives and the loss are applied from outside, in `vlmkit.training.itm`
(one process or the global batch).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlmkit.models.common.mlp import gelu_tanh


class ItmHead(nn.Module):
    """Linear 2-way classifier over a fused feature: [M, W] -> logits [M, 2] (class 1 = match)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.proj(fused)


class PairItmHead(nn.Module):
    """Two-tower ITM: MLP over [u, v, u * v, |u - v|] of image u [M, E] and text v [M, E] ->
    logits [M, 2]."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(4 * embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 2)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        u, v = image_embeds, text_embeds
        features = torch.cat([u, v, u * v, (u - v).abs()], dim=-1)  # [M, 4E]
        return self.fc2(gelu_tanh(self.fc1(features)))


@dataclass(frozen=True, kw_only=True)
class ItmHeadConfig:
    """The ITM head of an image-text model.

    fusion: "pair" (`PairItmHead` on the two pooled embeddings: a two-tower has no cross-modal
        layer) or "multimodal" (`ItmHead` on the model's own fused feature, CoCa's `fuse`).
    dim: the embedding width E ("pair") or the fused width W ("multimodal").
    hidden_dim: the pair MLP's hidden width ("pair" only; 0 for "multimodal").
    """

    fusion: Literal["pair", "multimodal"]
    dim: int
    hidden_dim: int = 0

    def build(self) -> nn.Module:
        """A freshly initialised head of this shape (PyTorch's default init, float32)."""
        if self.fusion == "pair":
            return PairItmHead(self.dim, self.hidden_dim)
        return ItmHead(self.dim)
