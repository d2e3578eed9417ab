"""SigLIP 2 NaFlex config (arXiv:2502.14786; transformers' Siglip2Config, model_type "siglip2").

NaFlex ("native flexible") towers read an image at its own aspect ratio: the processor resizes it
so that its h x w patch grid holds at most `max_num_patches` patches, the patches enter as
flattened vectors, and the learned position table (a square grid of `num_patches` entries, 16 x 16
for the published checkpoints) is resized to each image's h x w grid. The text tower is SigLIP's
(`SiglipTextConfig`), with Gemma's 256k vocabulary; the two-tower config is `SiglipConfig`'s with
this vision config.

Presets follow the published NaFlex checkpoints (HF google/siglip2-*-naflex): base-patch16 (ViT-B,
86M vision) and so400m-patch16. The fixed-resolution SigLIP 2 checkpoints (google/siglip2-base-
patch16-224, ...) are plain SigLIP models (model_type "siglip"): their presets live with the siglip
family (`vlmkit.models.siglip.config.TWO_TOWER_PRESETS`).
"""

import math
from dataclasses import dataclass, replace

from vlmkit.models.common.activations import Activation
from vlmkit.models.siglip.config import SiglipConfig, SiglipTextConfig


@dataclass(kw_only=True)
class Siglip2VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    patch_size: int
    # Entries of the learned position table, a square grid (256 = 16 x 16); resized per image.
    num_patches: int = 256
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    use_head: bool = True
    hidden_act: Activation = "gelu_tanh"

    def __post_init__(self):
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(f"num_patches {self.num_patches} is not a square (the position table is a square grid)")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    @property
    def position_grid(self) -> int:
        """Side of the learned position table (16 for 256 entries)."""
        return math.isqrt(self.num_patches)

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch: num_channels * patch_size**2, in (row, col, channel) order."""
        return self.num_channels * self.patch_size**2


@dataclass(kw_only=True)
class Siglip2Config(SiglipConfig):
    """SigLIP 2 NaFlex two-tower model: SiglipConfig with the NaFlex vision tower."""

    vision: Siglip2VisionConfig

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Siglip2Config":
        if name not in PRESETS:
            raise KeyError(f"unknown SigLIP 2 preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


# Gemma's special ids (<pad> 0, <eos> 1, <bos> 2); kept for config.json only, as in SigLIP.
_GEMMA_IDS = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)


def _preset(width: int, mlp: int, depth: int, heads: int, patch: int) -> Siglip2Config:
    return Siglip2Config(
        vision=Siglip2VisionConfig(hidden_size=width, intermediate_size=mlp, num_layers=depth, num_heads=heads,
                                   patch_size=patch),
        text=SiglipTextConfig(vocab_size=256000, hidden_size=width, intermediate_size=mlp, num_layers=depth,
                              num_heads=heads, **_GEMMA_IDS),
    )


PRESETS: dict[str, Siglip2Config] = {
    "siglip2-base-patch16-naflex": _preset(768, 3072, 12, 12, 16),
    "siglip2-so400m-patch16-naflex": _preset(1152, 4304, 27, 16, 16),
    "debug": Siglip2Config(
        vision=Siglip2VisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, patch_size=8,
                                   num_patches=16),
        text=SiglipTextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                              max_position_embeddings=16, pad_token_id=1, bos_token_id=2, eos_token_id=3),
    ),
}
