"""SigLIP vision tower config.

Presets follow the published checkpoints (arXiv:2303.15343; HF google/siglip-*):
- so400m-14-224 / -448 / -896: the shape-optimised 400M ViT (width 1152, depth 27, MLP 4304,
  16 heads, patch 14) at the three PaliGemma resolutions (256 / 1024 / 4096 patches).
- b16-224: ViT-B/16 at 224 (google/siglip-base-patch16-224), 196 patches.
"""

from dataclasses import dataclass, replace


@dataclass(kw_only=True)
class SiglipVisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    # Multihead attention-pooling ("MAP") head: a learned probe attends over the patch tokens.
    # PaliGemma does not use it (it reads all patch tokens); contrastive SigLIP does.
    use_head: bool = False

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SiglipVisionConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown SigLIP preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16, patch_size=14)

PRESETS: dict[str, SiglipVisionConfig] = {
    "so400m-14-224": SiglipVisionConfig(image_size=224, **_SO400M),
    "so400m-14-448": SiglipVisionConfig(image_size=448, **_SO400M),
    "so400m-14-896": SiglipVisionConfig(image_size=896, **_SO400M),
    "b16-224": SiglipVisionConfig(
        hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224,
        patch_size=16, use_head=True,
    ),
    "debug": SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=32, patch_size=8,
    ),
}
