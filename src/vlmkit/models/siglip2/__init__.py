"""SigLIP 2 NaFlex: SigLIP's two towers with native-resolution, aspect-preserving image inputs."""

from vlmkit.models.siglip2.config import Siglip2Config, Siglip2VisionConfig
from vlmkit.models.siglip2.model import Siglip2TwoTower, Siglip2VisionTower

__all__ = ["Siglip2Config", "Siglip2TwoTower", "Siglip2VisionConfig", "Siglip2VisionTower"]
