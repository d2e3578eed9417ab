"""SigLIP registry records: the vision tower alone and the two-tower image-text model."""

from dataclasses import replace

from vlmkit.models.registry import FamilySpec, register, tokenizer_fields
from vlmkit.models.siglip import hf_mapping
from vlmkit.models.siglip.config import PRESETS, TWO_TOWER_PRESETS, SiglipConfig, SiglipVisionConfig
from vlmkit.models.siglip.model import SiglipVisionTower
from vlmkit.models.siglip.two_tower import SiglipTwoTower


def image_processor_config(image_size: int) -> dict:
    """transformers' SiglipImageProcessor metadata: bicubic resize to a square, mean = std = 0.5."""
    return {
        "image_processor_type": "SiglipImageProcessor",
        "do_resize": True, "size": {"height": image_size, "width": image_size}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
    }


def with_tokenizer(cfg: SiglipConfig, tok, vocab_size: int | None = None) -> SiglipConfig:
    """`cfg` whose text tower has the tokenizer's vocabulary (or `vocab_size`) and special ids."""
    text = replace(cfg.text, **tokenizer_fields(tok, vocab_size))
    return replace(cfg, text=text)


SIGLIP_VISION = register(FamilySpec(
    name="siglip_vision", kind="vision", config_class=SiglipVisionConfig, model_class=SiglipVisionTower,
    model_types=("siglip_vision_model",), config_from_hf=hf_mapping.vision_config_from_hf,
    config_to_hf=hf_mapping.vision_config_to_hf, table=lambda cfg: hf_mapping.VISION_TABLE,
    normalise_key=lambda k: k.removeprefix("vision_model."), to_hub_name=lambda k: "vision_model." + k,
    presets=PRESETS, preprocessor_config=lambda cfg: image_processor_config(cfg.image_size),
    blocks=lambda model: list(model.layers),
))

# Two-tower SigLIP (or the CLIP-style variant): checkpoint keys are already in the hub layout.
SIGLIP = register(FamilySpec(
    name="siglip", kind="image-text", config_class=SiglipConfig, model_class=SiglipTwoTower,
    model_types=("siglip",), config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf,
    table=hf_mapping.two_tower_table, presets=TWO_TOWER_PRESETS, with_tokenizer=with_tokenizer,
    preprocessor_config=lambda cfg: image_processor_config(cfg.vision.image_size),
    blocks=lambda model: [*model.vision_tower.layers, *model.text_tower.layers],
))
