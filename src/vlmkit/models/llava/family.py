"""LLaVA registry record (llava-hf/llava-1.5-* folders, and Pixtral's mistral-community/pixtral-12b:
LLaVA with the Pixtral-ViT tower, presets from models/pixtral/config.py)."""

from dataclasses import replace

from vlmkit.errors import TokenizerError

from vlmkit.models.clip.family import image_processor_config
from vlmkit.models.llava import hf_mapping
from vlmkit.models.llava.config import PRESETS, LlavaConfig
from vlmkit.models.llava.model import Llava
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig
from vlmkit.models.parts.placeholders import PlaceholderGeneration
from vlmkit.models.pixtral.config import PRESETS as PIXTRAL_PRESETS
from vlmkit.models.pixtral.family import image_processor_config as pixtral_image_processor_config
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields, vision_language_blocks


def _pixtral(cfg: LlavaConfig) -> bool:
    """The processor a LLaVA folder is made for follows its tower: transformers' PixtralProcessor
    for the Pixtral-ViT (`[IMG]` placeholders, images at their own sizes), else LlavaProcessor."""
    return type(cfg.vision) is PixtralVisionConfig


def with_tokenizer(cfg: LlavaConfig, tok, vocab_size: int | None = None) -> LlavaConfig:
    """`cfg` with the tokenizer's vocabulary size and its pad / bos / eos / image placeholder ids."""
    image_id = tok.token_to_id("[IMG]") if _pixtral(cfg) else tok.image_token_id
    if image_id is None:
        raise TokenizerError(f"tokenizer in {tok.name} has no [IMG] token")
    return replace(cfg, text=replace(cfg.text, **tokenizer_fields(tok, vocab_size)), image_token_id=image_id)


def preprocessor_config(cfg: LlavaConfig) -> dict:
    if _pixtral(cfg):
        return {**pixtral_image_processor_config(cfg.vision), "processor_class": "PixtralProcessor"}
    return {**image_processor_config(cfg.vision.image_size), "processor_class": "LlavaProcessor"}


LLAVA = register(FamilySpec(
    name="llava", kind="vlm", config_class=LlavaConfig, model_class=Llava, model_types=("llava",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key, to_hub_name=hf_mapping.to_hub_name,
    dropped_keys=tied_head_dropped(r"^language_model\.lm_head\.weight$"),
    presets={**PRESETS, **PIXTRAL_PRESETS}, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.data.processors.llava:build_processor",
    processor_files="vlmkit.data.processors.llava:processor_files",
    blocks=vision_language_blocks,
    # image_sizes: Pixtral's per-image sizes (absent, i.e. None, for CLIP towers).
    generation=PlaceholderGeneration(prefix_lm=False, position_start=0, image_inputs=("pixel_values", "image_sizes")),
))
