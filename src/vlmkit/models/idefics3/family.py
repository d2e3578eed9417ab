"""Idefics3 / SmolVLM registry record (HuggingFaceTB/SmolVLM-*, HuggingFaceM4/Idefics3-* folders;
config.json model_type "idefics3" or "smolvlm")."""

from dataclasses import replace

from vlmkit.models.idefics3 import hf_mapping
from vlmkit.models.idefics3.config import PRESETS, Idefics3Config
from vlmkit.models.idefics3.model import Idefics3
from vlmkit.models.parts.placeholders import PlaceholderGeneration
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields, vision_language_blocks


def with_tokenizer(cfg: Idefics3Config, tok, vocab_size: int | None = None) -> Idefics3Config:
    """`cfg` with the tokenizer's vocabulary size and its pad / bos / eos / `<image>` ids."""
    return replace(cfg, text=replace(cfg.text, **tokenizer_fields(tok, vocab_size)), image_token_id=tok.image_token_id)


def preprocessor_config(cfg: Idefics3Config) -> dict:
    """Idefics3ImageProcessor fields for frames of the tower's size (4 x 4 tiles at most, as the
    published SmolVLM-256M / 500M folders), and the processor's image_seq_len."""
    side = cfg.vision.image_size
    return dict(
        image_processor_type="Idefics3ImageProcessor", processor_class="Idefics3Processor",
        do_resize=True, size={"longest_edge": 4 * side}, max_image_size={"longest_edge": side},
        do_image_splitting=True, resample=1, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True, image_seq_len=cfg.num_image_tokens,
    )


IDEFICS3 = register(FamilySpec(
    name="idefics3", kind="vlm", config_class=Idefics3Config, model_class=Idefics3,
    model_types=("idefics3", "smolvlm"), config_from_hf=hf_mapping.config_from_hf,
    config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table, normalise_key=hf_mapping.normalise_key,
    to_hub_name=hf_mapping.to_hub_name,
    dropped_keys=tied_head_dropped(r"^language_model\.lm_head\.weight$"),
    presets=PRESETS, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.data.processors.idefics3:build",
    processor_files="vlmkit.data.processors.idefics3:processor_files",
    blocks=vision_language_blocks,
    # The frames' pixel_attention_mask [B, F, H, W] goes to encode_images with the pixels.
    generation=PlaceholderGeneration(image_inputs=("pixel_values", "pixel_attention_mask")),
))
