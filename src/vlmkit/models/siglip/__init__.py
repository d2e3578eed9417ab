"""SigLIP: the vision tower (used by PaliGemma), the text tower and the two-tower model."""

from vlmkit.models.siglip.config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from vlmkit.models.siglip.model import SiglipVisionTower
from vlmkit.models.siglip.text import SiglipTextTower
from vlmkit.models.siglip.two_tower import SiglipTwoTower

__all__ = ["SiglipConfig", "SiglipTextConfig", "SiglipTextTower", "SiglipTwoTower", "SiglipVisionConfig",
           "SiglipVisionTower"]
