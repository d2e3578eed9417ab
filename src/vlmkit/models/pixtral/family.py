"""Pixtral-ViT registry record (HF `pixtral`, transformers' PixtralVisionModel): the tower alone.

The whole Pixtral model is a `llava` folder whose vision_config is this tower (see
models/pixtral/config.py for its presets, registered with the llava family).
"""

from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig, PixtralVisionTower
from vlmkit.models.pixtral import hf_mapping
from vlmkit.models.pixtral.config import VISION_PRESETS
from vlmkit.models.registry import FamilySpec, register

PIXTRAL_VISION = register(FamilySpec(
    name="pixtral_vision", kind="vision", config_class=PixtralVisionConfig, model_class=PixtralVisionTower,
    model_types=("pixtral",), config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf,
    table=hf_mapping.table, presets=VISION_PRESETS, blocks=lambda model: list(model.layers),
))
