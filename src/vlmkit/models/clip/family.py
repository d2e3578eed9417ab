"""CLIP ViT vision tower registry record (the tower of LLaVA and LLaVA-NeXT)."""

from vlmkit.models.clip import hf_mapping
from vlmkit.models.clip.config import PRESETS, ClipVisionConfig
from vlmkit.models.registry import FamilySpec, register
from vlmkit.models.siglip.model import SiglipVisionTower

# OpenAI CLIP's normalisation (transformers' OPENAI_CLIP_MEAN / _STD).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def image_processor_config(image_size: int) -> dict:
    """transformers' CLIPImageProcessor metadata: bicubic shortest-edge resize, centre crop."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"shortest_edge": image_size}, "resample": 3,
        "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True,
    }


CLIP_VISION = register(FamilySpec(
    name="clip_vision", kind="vision", config_class=ClipVisionConfig, model_class=SiglipVisionTower,
    model_types=("clip_vision_model",), config_from_hf=hf_mapping.config_from_hf,
    config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table, normalise_key=hf_mapping.normalise_key,
    to_hub_name=hf_mapping.to_hub_name, presets=PRESETS,
    preprocessor_config=lambda cfg: image_processor_config(cfg.image_size),
    blocks=lambda model: list(model.layers),
))
