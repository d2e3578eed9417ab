"""DeepSeek-VL: SigLIP tower + 2-layer GELU aligner + Llama decoder; the hybrid adds a SAM ViT
high-resolution tower and the hybrid aligner."""

from vlmkit.models.deepseek_vl.config import DeepseekVLConfig, DeepseekVLHybridConfig
from vlmkit.models.deepseek_vl.hybrid import DeepseekVLHybrid
from vlmkit.models.deepseek_vl.model import DeepseekVL

__all__ = ["DeepseekVL", "DeepseekVLConfig", "DeepseekVLHybrid", "DeepseekVLHybridConfig"]
