"""DeepSeek-VL: SigLIP tower + 2-layer GELU aligner + Llama decoder."""

from vlmkit.models.deepseek_vl.config import DeepseekVLConfig
from vlmkit.models.deepseek_vl.model import DeepseekVL

__all__ = ["DeepseekVL", "DeepseekVLConfig"]
