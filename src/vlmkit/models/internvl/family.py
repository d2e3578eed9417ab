"""InternVL registry record (OpenGVLab/InternVL*-hf folders, transformers' layout)."""

from dataclasses import replace

from vlmkit.errors import TokenizerError
from vlmkit.models.internvl import hf_mapping
from vlmkit.models.internvl.config import PRESETS, InternVLConfig
from vlmkit.models.internvl.model import InternVL
from vlmkit.models.parts.placeholders import PlaceholderGeneration
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields, vision_language_blocks

CONTEXT_TOKEN = "<IMG_CONTEXT>"
# GotOcr2ImageProcessor's ImageNet statistics (what the InternVL -hf checkpoints ship).
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def with_tokenizer(cfg: InternVLConfig, tok, vocab_size: int | None = None) -> InternVLConfig:
    """`cfg` with the tokenizer's vocabulary size, pad / bos / eos ids and `<IMG_CONTEXT>` id."""
    image_id = tok.token_to_id(CONTEXT_TOKEN)
    if image_id is None:
        raise TokenizerError(f"the tokenizer has no {CONTEXT_TOKEN} token, which InternVL needs")
    return replace(cfg, text=replace(cfg.text, **tokenizer_fields(tok, vocab_size)), image_token_id=image_id)


def preprocessor_config(cfg: InternVLConfig) -> dict:
    """GotOcr2ImageProcessor metadata: tiles of the tower's size, bicubic, ImageNet normalisation."""
    size = cfg.vision.image_size
    return {
        "image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 3, "crop_to_patches": False,
        "min_patches": 1, "max_patches": 12, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "do_convert_rgb": True,
    }


INTERNVL = register(FamilySpec(
    name="internvl", kind="vlm", config_class=InternVLConfig, model_class=InternVL, model_types=("internvl",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key,
    dropped_keys=tied_head_dropped(r"^language_model\.lm_head\.weight$"),
    presets=PRESETS, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.data.processors.internvl:build_processor",
    processor_files="vlmkit.data.processors.internvl:processor_files",
    blocks=vision_language_blocks,
    generation=PlaceholderGeneration(prefix_lm=False, position_start=0),
))
