"""Llama 2/3, Mistral and Qwen2 decoders from one config."""

from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.llama.model import Llama, positions_from_mask

__all__ = ["Llama", "LlamaConfig", "positions_from_mask"]
