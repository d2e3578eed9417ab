"""PaliGemma 1/2 registry record (and the image metadata a PaliGemma folder carries)."""

from dataclasses import replace

from vlmkit.models.paligemma import hf_mapping
from vlmkit.models.paligemma.config import PRESETS, PaliGemmaConfig
from vlmkit.models.paligemma.model import PALIGEMMA_GENERATION, PaliGemma
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields, vision_language_blocks
from vlmkit.models.siglip.family import image_processor_config


def preprocessor_config(cfg: PaliGemmaConfig) -> dict:
    """The image-processing metadata saved beside the weights (transformers' format)."""
    return {**image_processor_config(cfg.vision.image_size), "processor_class": "PaliGemmaProcessor",
            "image_seq_length": cfg.num_image_tokens}


def with_tokenizer(cfg: PaliGemmaConfig, tok, vocab_size: int | None = None) -> PaliGemmaConfig:
    """`cfg` with the tokenizer's vocabulary size and its pad / bos / eos / `<image>` ids."""
    text = replace(cfg.text, **tokenizer_fields(tok, vocab_size))
    return replace(cfg, text=text, image_token_id=tok.image_token_id)


PALIGEMMA = register(FamilySpec(
    name="paligemma", kind="vlm", config_class=PaliGemmaConfig, model_class=PaliGemma,
    model_types=("paligemma",), config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf,
    table=hf_mapping.table, normalise_key=hf_mapping.normalise_key, to_hub_name=hf_mapping.to_hub_name,
    dropped_keys=tied_head_dropped(r"^language_model\.lm_head\.weight$"),
    presets=PRESETS, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.pipeline:paligemma_processor", blocks=vision_language_blocks, generation=PALIGEMMA_GENERATION,
    train_format="prefix_lm",
))
