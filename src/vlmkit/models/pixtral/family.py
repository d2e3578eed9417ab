"""Pixtral-ViT registry record (HF `pixtral`, transformers' PixtralVisionModel): the tower alone.

The whole Pixtral model is a `llava` folder whose vision_config is this tower (see
models/pixtral/config.py for its presets, registered with the llava family).
"""

from vlmkit.models.clip.family import CLIP_MEAN, CLIP_STD
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig, PixtralVisionTower
from vlmkit.models.pixtral import hf_mapping
from vlmkit.models.pixtral.config import VISION_PRESETS
from vlmkit.models.registry import FamilySpec, register


def image_processor_config(cfg: PixtralVisionConfig) -> dict:
    """transformers' PixtralImageProcessor metadata: fit the longest edge into `image_size`, round
    up to whole patches, bicubic, OpenAI CLIP's normalisation, pad the batch to the largest image."""
    return {
        "image_processor_type": "PixtralImageProcessor", "do_resize": True, "size": {"longest_edge": cfg.image_size},
        "patch_size": {"height": cfg.patch_size, "width": cfg.patch_size}, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "do_convert_rgb": True, "do_pad": True,
    }


PIXTRAL_VISION = register(FamilySpec(
    name="pixtral_vision", kind="vision", config_class=PixtralVisionConfig, model_class=PixtralVisionTower,
    model_types=("pixtral",), config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf,
    table=hf_mapping.table, presets=VISION_PRESETS, preprocessor_config=image_processor_config,
    blocks=lambda model: list(model.layers),
))
