"""Mistral 3 registry record (HF `mistral3`, Mistral3ForConditionalGeneration; the shape of
mistralai/Mistral-Small-3.1-24B-Instruct-2503)."""

from dataclasses import replace

from vlmkit.errors import TokenizerError
from vlmkit.models.mistral3 import hf_mapping
from vlmkit.models.mistral3.config import PRESETS, Mistral3Config
from vlmkit.models.mistral3.model import Mistral3
from vlmkit.models.parts.placeholders import PlaceholderGeneration
from vlmkit.models.pixtral.family import image_processor_config
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields, vision_language_blocks


def with_tokenizer(cfg: Mistral3Config, tok, vocab_size: int | None = None) -> Mistral3Config:
    """`cfg` with the tokenizer's vocabulary size, pad / bos / eos ids and `[IMG]` id."""
    image_id = tok.token_to_id("[IMG]")
    if image_id is None:
        raise TokenizerError(f"tokenizer in {tok.name} has no [IMG] token")
    text = replace(cfg.text, **tokenizer_fields(tok, vocab_size))
    return replace(cfg, text=text, image_token_id=image_id)


def preprocessor_config(cfg: Mistral3Config) -> dict:
    """PixtralImageProcessor's metadata; the merge size lives in processor_config.json."""
    return {**image_processor_config(cfg.vision), "processor_class": "PixtralProcessor"}


MISTRAL3 = register(FamilySpec(
    name="mistral3", kind="vlm", config_class=Mistral3Config, model_class=Mistral3, model_types=("mistral3",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key, to_hub_name=hf_mapping.to_hub_name,
    dropped_keys=tied_head_dropped(r"^language_model\.lm_head\.weight$"),
    presets=PRESETS, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.data.processors.pixtral:build_mistral3_processor",
    processor_files="vlmkit.data.processors.pixtral:mistral3_processor_files",
    blocks=vision_language_blocks,
    generation=PlaceholderGeneration(prefix_lm=False, position_start=0, image_inputs=("pixel_values", "image_sizes")),
))
