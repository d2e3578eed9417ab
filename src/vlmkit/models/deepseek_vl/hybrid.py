"""DeepSeek-VL hybrid (arXiv:2403.05525, section 2.1), as transformers'
DeepseekVLHybridForConditionalGeneration; single-device plain PyTorch.

Axes: B batch, T tokens, M images, N image tokens per image (the SigLIP grid s x s), C SAM neck
channels, G SAM grid, D text width.

Each image is seen twice: the SigLIP tower reads it at low resolution (`pixel_values`, e.g. 384 px ->
24 x 24 tokens, post-LayerNormed last state), the SAM ViT at high resolution
(`high_res_pixel_values`, e.g. 1024 px -> a 64 x 64 grid). Two SAM maps are mixed:
  neck(last block)        + alpha * neck'(output of the first global-attention block)
each brought to the SigLIP grid by the same `high_res_proj` (bilinear resize to 4s x 4s, then two
3x3 stride-2 convs: C -> 2C -> 4C channels, s x s), alpha a learned scalar (0 at init). The aligner
(`HybridConnector`) projects both token sets to D / 2, concatenates (SAM half first), then
GELU -> linear. Placement, attention and positions are DeepSeek-VL's / LLaVA's.

Not supported: dropout; other input sizes than the configured ones.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.models.deepseek_vl.config import DeepseekVLHybridConfig
from vlmkit.models.llava.model import Llava
from vlmkit.models.parts.connectors import HybridConnector
from vlmkit.models.parts.placeholders import ImagePlaceholders
from vlmkit.models.parts.sam_vit import SamNeck, SamVisionEncoder
from vlmkit.models.registry import family_of
from vlmkit.models.siglip.model import SiglipVisionTower


class HighResProjection(nn.Module):
    """SAM map [M, C, G, G] -> [M, 4C, s, s]: bilinear resize to 4s x 4s, then two 3x3 stride-2 convs."""

    def __init__(self, channels: int, side: int):
        super().__init__()
        self.side = side
        self.conv1 = nn.Conv2d(channels, 2 * channels, kernel_size=3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2 * channels, 4 * channels, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(4 * self.side, 4 * self.side), mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(x))


class DeepseekVLHybrid(ImagePlaceholders, nn.Module):
    def __init__(self, cfg: DeepseekVLHybridConfig):
        super().__init__()
        self.cfg = cfg
        sam = cfg.high_res_vision
        if not sam.global_attn_indexes:
            raise ValueError("DeepSeek-VL hybrid reads the first global-attention SAM block; there is none")
        self.vision_tower = SiglipVisionTower(cfg.vision)
        self.high_res_vision_tower = SamVisionEncoder(sam)
        self.high_res_neck = SamNeck(sam.hidden_size, sam.output_channels)
        self.high_res_proj = HighResProjection(sam.output_channels, cfg.vision.grid)
        self.high_res_alpha = nn.Parameter(torch.zeros(1))
        self.aligner = HybridConnector(cfg.aligner, cfg.vision.hidden_size, cfg.high_res_features, cfg.text.hidden_size)
        self.language_model = family_of(cfg.text).model_class(cfg.text)

    def encode_high_res(self, high_res_pixel_values: torch.Tensor) -> torch.Tensor:
        """[M, 3, S', S'] -> [M, N, 4C] (row-major over the s x s grid)."""
        last, early = self.high_res_vision_tower(high_res_pixel_values, keep=self.cfg.high_res_vision.global_attn_indexes[0])
        x = self.high_res_proj(last) + self.high_res_proj(self.high_res_neck(early)) * self.high_res_alpha
        return x.permute(0, 2, 3, 1).flatten(1, 2)  # [M, 4C, s, s] -> [M, N, 4C]

    def encode_images(self, pixel_values: torch.Tensor, high_res_pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [M, 3, S, S], high_res_pixel_values [M, 3, S', S'] -> image tokens [M, N, D]."""
        return self.aligner(self.vision_tower(pixel_values), self.encode_high_res(high_res_pixel_values))

    def forward(self, input_ids, pixel_values=None, high_res_pixel_values=None, attention_mask=None,
                image_features=None) -> torch.Tensor:
        """DeepSeek-VL's forward (see `Llava.forward`) with both image inputs: logits [B, T, V]."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values, high_res_pixel_values)
        return Llava.forward(self, input_ids, None, attention_mask, image_features)

    hidden_states = Llava.hidden_states  # from precomputed image_features
