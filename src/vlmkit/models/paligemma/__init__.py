"""PaliGemma 1 and 2: SigLIP vision tower + linear projector + Gemma decoder."""

from vlmkit.models.paligemma.config import PaliGemmaConfig
from vlmkit.models.paligemma.model import PaliGemma

__all__ = ["PaliGemma", "PaliGemmaConfig"]
