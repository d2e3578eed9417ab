"""Qwen2-VL: native-resolution vision tower + Qwen2 decoder with M-RoPE."""

from vlmkit.models.qwen2_vl.config import PRESETS, Qwen2VLConfig
from vlmkit.models.qwen2_vl.model import Qwen2VL, Qwen2VLGeneration

__all__ = ["PRESETS", "Qwen2VL", "Qwen2VLConfig", "Qwen2VLGeneration"]
