"""Mistral 3 (Mistral Small 3.1): Pixtral-ViT tower + RMSNorm / 2 x 2 patch merger / 2-layer MLP + Mistral decoder."""

from vlmkit.models.mistral3.config import Mistral3Config
from vlmkit.models.mistral3.model import Mistral3

__all__ = ["Mistral3", "Mistral3Config"]
