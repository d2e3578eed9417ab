"""InternVL: InternViT tower + pixel shuffle / LayerNorm / MLP connector + decoder (Qwen2)."""

from vlmkit.models.internvl.config import InternVLConfig
from vlmkit.models.internvl.model import InternVL

__all__ = ["InternVL", "InternVLConfig"]
