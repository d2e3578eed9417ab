"""Qwen2.5-VL: the Qwen2-VL composition with a windowed RMSNorm / SwiGLU tower."""

from vlmkit.models.qwen2_5_vl.config import PRESETS, Qwen2_5_VLConfig
from vlmkit.models.qwen2_5_vl.model import Qwen2_5_VL

__all__ = ["PRESETS", "Qwen2_5_VL", "Qwen2_5_VLConfig"]
