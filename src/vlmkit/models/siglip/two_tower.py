"""Two-tower image-text model: SigLIP (arXiv:2303.15343) or CLIP-style (arXiv:2103.00020).

Axes: B batch (Bi images, Bt texts), T tokens, E embedding width, D tower width.

Equal to transformers' SiglipModel: the vision tower's MAP-head output and the text tower's
pooled output are L2-normalised, and logits_per_image = exp(t') * img @ txt^T + b, where t' is the
learned `logit_scale` (stored as a log, so exp(t') stays positive) and b the learned
`logit_bias`. The CLIP-style variant (`contrastive_loss="softmax"`) has no bias and starts at
t' = log(1/0.07); SigLIP starts at t' = log 10, b = -10 (see `SiglipConfig`). The model returns
embeddings and logits; the losses are applied from outside (`vlmkit.training.losses`).

Clamping t' during training (open_clip clamps at log 100) is the trainer's job, not the model's.
Not supported here: dropout. SigLIP 2 NaFlex inputs: `vlmkit.models.siglip2.Siglip2TwoTower`.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.models.common.contracts import TextFormat
from vlmkit.models.itm import ItmHeadConfig
from vlmkit.models.siglip.config import SiglipConfig
from vlmkit.models.siglip.model import SiglipVisionTower
from vlmkit.models.siglip.text import SiglipTextTower


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
    The matrix is computed text-major and transposed, as transformers does: `image @ text.T`
    is the same maths in another reduction order (1.9e-6 off, measured at logit_scale 10).
    """
    per_text = text_embeds @ image_embeds.T * logit_scale.exp()  # [Bt, Bi]
    if logit_bias is not None:
        per_text = per_text + logit_bias
    return per_text.T  # [Bi, Bt]


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

    # The tower built from `cfg.vision` (SigLIP 2 NaFlex swaps in its own; everything else is shared).
    vision_tower_class: type[nn.Module] = SiglipVisionTower

    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = self.vision_tower_class(cfg.vision)
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

    # --- what the training engine asks of an image-text model (vlmkit.training.contrastive) ---

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weights of the loss terms this model trains with: the contrastive loss only."""
        return {"contrastive": 1.0}

    @property
    def loss_only_parts(self) -> dict[str, tuple[str, ...]]:
        """Top-level parts that feed only one loss term (frozen when its weight is 0): none."""
        return {}

    @property
    def text_format(self) -> TextFormat:
        """Caption then EOS, padded to every text position: the tower pools the LAST position."""
        return TextFormat(max_len=self.cfg.text.max_position_embeddings, bos=False, pad_to_max=True)

    @property
    def itm_head_config(self) -> ItmHeadConfig:
        """No cross-modal layer: ITM fuses the two embeddings [B, E] itself (`PairItmHead`)."""
        E = self.cfg.text.projection_size
        return ItmHeadConfig(fusion="pair", dim=E, hidden_dim=E)
