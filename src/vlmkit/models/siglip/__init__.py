"""SigLIP vision tower (and, for two-tower models, its text tower)."""

from vlmkit.models.siglip.config import SiglipVisionConfig
from vlmkit.models.siglip.model import SiglipVisionTower

__all__ = ["SiglipVisionConfig", "SiglipVisionTower"]
