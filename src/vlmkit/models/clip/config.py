"""CLIP ViT vision tower config: the SigLIP tower with CLIP's switches on (no second ViT).

Presets follow the published OpenAI checkpoints (arXiv:2103.00020; HF openai/clip-vit-*):
- clip-vit-large-patch14-336: ViT-L/14 at 336 px (width 1024, depth 24, MLP 4096, 16 heads,
  576 patches + class token), the tower of llava-hf/llava-1.5-* and (with the same shape,
  vision_config image_size 336) of llava-hf/llava-v1.6-*.
- clip-vit-large-patch14: the same ViT-L/14 at 224 px (256 patches), openai/clip-vit-large-patch14.
- clip-vit-base-patch16: ViT-B/16 at 224 px.
"""

from dataclasses import dataclass

from vlmkit.models.common.activations import Activation
from vlmkit.models.siglip.config import PostNorm, SiglipVisionConfig


@dataclass(kw_only=True)
class ClipVisionConfig(SiglipVisionConfig):
    """Only the defaults differ from SigLIP's: a class token with its own position, a LayerNorm
    before the first block, no patch-conv bias, quick-GELU, and the final LayerNorm applied to
    the pooled class token only. The distinct class tells the two families apart when saving."""

    layer_norm_eps: float = 1e-5
    class_token: bool = True
    pre_norm: bool = True
    patch_bias: bool = False
    hidden_act: Activation = "quick_gelu"
    post_norm: PostNorm = "pooled"

    @classmethod
    def presets(cls) -> dict[str, "ClipVisionConfig"]:
        return PRESETS


_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, patch_size=14)

PRESETS: dict[str, ClipVisionConfig] = {
    "clip-vit-large-patch14-336": ClipVisionConfig(image_size=336, **_VIT_L14),
    "clip-vit-large-patch14": ClipVisionConfig(image_size=224, **_VIT_L14),
    "clip-vit-base-patch16": ClipVisionConfig(
        hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224, patch_size=16,
    ),
    "debug": ClipVisionConfig(
        hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, image_size=32, patch_size=8,
    ),
}
