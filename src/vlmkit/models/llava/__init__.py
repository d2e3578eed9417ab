"""LLaVA: CLIP vision tower + 2-layer MLP connector + decoder."""

from vlmkit.models.llava.config import LlavaConfig
from vlmkit.models.llava.model import Llava

__all__ = ["Llava", "LlavaConfig"]
