"""Llama / Mistral / Qwen2 decoder registry record (text-only checkpoints, and the text side of
LLaVA, SmolVLM, InternVL ...)."""

from dataclasses import replace

from vlmkit.models.llama import hf_mapping
from vlmkit.models.llama.config import PRESETS, LlamaConfig
from vlmkit.models.llama.model import Llama
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields


def with_tokenizer(cfg: LlamaConfig, tok, vocab_size: int | None = None) -> LlamaConfig:
    return replace(cfg, **tokenizer_fields(tok, vocab_size))


LLAMA = register(FamilySpec(
    name="llama", kind="text", config_class=LlamaConfig, model_class=Llama,
    model_types=("llama", "mistral", "qwen2"), config_from_hf=hf_mapping.config_from_hf,
    config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    dropped_keys=tied_head_dropped(),
    presets=PRESETS, with_tokenizer=with_tokenizer, blocks=lambda model: list(model.layers),
))
