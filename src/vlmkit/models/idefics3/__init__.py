"""Idefics3 / SmolVLM: SigLIP tower with bucketed positions + pixel shuffle and linear + decoder."""

from vlmkit.models.idefics3.config import Idefics3Config
from vlmkit.models.idefics3.model import Idefics3

__all__ = ["Idefics3", "Idefics3Config"]
