"""CLIP ViT vision tower: `SiglipVisionTower` built from a `ClipVisionConfig`."""

from vlmkit.models.clip.config import ClipVisionConfig
from vlmkit.models.siglip.model import SiglipVisionTower as ClipVisionTower

__all__ = ["ClipVisionConfig", "ClipVisionTower"]
