"""Gemma 1/2 decoder registry record (a text-only checkpoint, e.g. a PaliGemma's language model)."""

from dataclasses import replace

from vlmkit.models.gemma import hf_mapping
from vlmkit.models.gemma.config import PRESETS, GemmaConfig
from vlmkit.models.gemma.model import Gemma
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields


def with_tokenizer(cfg: GemmaConfig, tok, vocab_size: int | None = None) -> GemmaConfig:
    return replace(cfg, **tokenizer_fields(tok, vocab_size))


GEMMA = register(FamilySpec(
    name="gemma", kind="text", config_class=GemmaConfig, model_class=Gemma, model_types=("gemma", "gemma2"),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    dropped_keys=tied_head_dropped(),
    presets=PRESETS, with_tokenizer=with_tokenizer, blocks=lambda model: list(model.layers),
))
