"""CoCa, contrastive captioner (arXiv:2205.01917): config, model and cached caption generation."""

from vlmkit.models.coca.config import CocaConfig
from vlmkit.models.coca.generate import generate_caption
from vlmkit.models.coca.model import CoCa, CocaLoss, CocaOutput

__all__ = ["CoCa", "CocaConfig", "CocaLoss", "CocaOutput", "generate_caption"]
