"""Qwen2-VL registry record (Qwen/Qwen2-VL-* folders, transformers' Qwen2VLForConditionalGeneration);
its processor is vlmkit.data.processors.qwen2_vl (images only, no video)."""

from dataclasses import replace

from vlmkit.errors import TokenizerError
from vlmkit.models.qwen2_vl import hf_mapping
from vlmkit.models.qwen2_vl.config import PRESETS, Qwen2VLConfig
from vlmkit.models.qwen2_vl.model import Qwen2VL, Qwen2VLGeneration
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields


def with_tokenizer(cfg: Qwen2VLConfig, tok, vocab_size: int | None = None) -> Qwen2VLConfig:
    """`cfg` with the tokenizer's vocabulary / pad / bos / eos ids and its `<|image_pad|>` id."""
    image_id = tok.token_to_id("<|image_pad|>")
    if image_id is None:
        raise TokenizerError(f"tokenizer in {tok.name} has no <|image_pad|> token")
    return replace(cfg, text=replace(cfg.text, **tokenizer_fields(tok, vocab_size)), image_token_id=image_id)


QWEN2_VL = register(FamilySpec(
    name="qwen2_vl", kind="vlm", config_class=Qwen2VLConfig, model_class=Qwen2VL, model_types=("qwen2_vl",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key, dropped_keys=tied_head_dropped(), presets=PRESETS,
    with_tokenizer=with_tokenizer, processor="vlmkit.data.processors.qwen2_vl:build_processor",
    blocks=lambda m: [*m.visual.blocks, *m.language_model.layers],
    generation=Qwen2VLGeneration(),
))
