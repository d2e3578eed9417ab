"""Gemma 1 and Gemma 2 decoders from one config."""

from vlmkit.models.gemma.config import GemmaConfig
from vlmkit.models.gemma.model import Gemma

__all__ = ["Gemma", "GemmaConfig"]
