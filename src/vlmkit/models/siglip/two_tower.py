"""Two-tower image-text model: SigLIP (arXiv:2303.15343) or CLIP-style (arXiv:2103.00020).

Axes: B batch (Bi images, Bt texts), T tokens, E embedding width, D tower width.

Equal to transformers' SiglipModel: the vision tower's MAP-head output and the text tower's
pooled output are L2-normalised, and logits_per_image = exp(t') * img @ txt^T + b, where t' is the
learned `logit_scale` (stored as a log, so exp(t') stays positive) and b the learned
`logit_bias`. The CLIP-style variant (`contrastive_loss="softmax"`) has no bias and starts at
t' = log(1/0.07); SigLIP starts at t' = log 10, b = -10 (see `SiglipConfig`). The losses are the
ones in `vlmkit.training.losses`.

Clamping t' during training (open_clip clamps at log 100) is the trainer's job, not the model's.
Not supported: NaFlex / SigLIP 2 multi-resolution inputs, dropout.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.models.siglip.model import SiglipVisionTower
from vlmkit.models.siglip.text import SiglipTextTower
from vlmkit.training.losses import ClipLoss, SigLipLoss


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x [..., E] -> x / ||x|| along the last axis (as the reference: no epsilon)."""
    return x / x.norm(p=2, dim=-1, keepdim=True)


def contrastive_logits(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised image [Bi, E] and text [Bt, E] embeddings -> logits_per_image [Bi, Bt].

    `logit_scale` is the log-temperature t' (one element); the result is exp(t') * cos + b.
    """
    logits = image_embeds @ text_embeds.T * logit_scale.exp()  # [Bi, Bt]
    return logits if logit_bias is None else logits + logit_bias


def contrastive_loss(
    kind: str,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    """The `kind` ("sigmoid" / "softmax") loss of paired [B, E] embeddings, a 0-dim tensor.

    Delegates to `SigLipLoss` / `ClipLoss`, which switch to their distributed forms when a
    process group with more than one rank is initialised.
    """
    if kind == "sigmoid":
        if logit_bias is None:
            raise ValueError("the sigmoid loss needs a logit bias")
        return SigLipLoss(group=group)(image_embeds, text_embeds, logit_scale.exp(), logit_bias)
    return ClipLoss(group=group)(image_embeds, text_embeds, logit_scale.exp())


@dataclass
class TwoTowerOutput:
    """logits_per_image [Bi, Bt] (logits_per_text is its transpose); embeddings L2-normalised."""

    logits_per_image: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor

    @property
    def logits_per_text(self) -> torch.Tensor:
        return self.logits_per_image.T


class SiglipTwoTower(nn.Module):
    """SigLIP / CLIP-style contrastive model; loads and saves HF "siglip" checkpoints."""

    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.text_tower = SiglipTextTower(cfg.text)
        sigmoid = cfg.contrastive_loss == "sigmoid"
        scale = cfg.init_logit_scale
        if scale is None:
            scale = math.log(10.0) if sigmoid else math.log(1 / 0.07)
        # Shape [1], as in the reference checkpoints (strict loading checks shapes).
        self.logit_scale = nn.Parameter(torch.full((1,), scale))
        if sigmoid:
            bias = -10.0 if cfg.init_logit_bias is None else cfg.init_logit_bias
            self.logit_bias = nn.Parameter(torch.full((1,), bias))
        else:
            self.register_parameter("logit_bias", None)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, C, H, W] -> L2-normalised image embeddings [B, E] (weight dtype)."""
        return l2_normalize(self.vision_tower.pool(self.vision_tower(pixel_values)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] int64 (padded as in training) -> L2-normalised text embeddings [B, E]."""
        return l2_normalize(self.text_tower(input_ids, attention_mask)[1])

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Normalised [Bi, E], [Bt, E] -> logits_per_image [Bi, Bt] = exp(t') * cos + b."""
        return contrastive_logits(image_embeds, text_embeds, self.logit_scale, self.logit_bias)

    def forward(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> TwoTowerOutput:
        """pixel_values [Bi, C, H, W], input_ids [Bt, T] -> TwoTowerOutput."""
        img = self.encode_image(pixel_values)
        txt = self.encode_text(input_ids, attention_mask)
        return TwoTowerOutput(self.logits(img, txt), img, txt)

    def loss(self, out: TwoTowerOutput, group=None) -> torch.Tensor:
        """The configured contrastive loss of a batch of matching pairs (Bi == Bt), 0-dim."""
        return contrastive_loss(
            self.cfg.contrastive_loss, out.image_embeds, out.text_embeds, self.logit_scale, self.logit_bias, group
        )
