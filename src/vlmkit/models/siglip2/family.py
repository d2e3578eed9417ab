"""SigLIP 2 NaFlex registry record (the fixed-resolution SigLIP 2 checkpoints are `siglip` models)."""

from vlmkit.models.registry import FamilySpec, register
from vlmkit.models.siglip.family import with_tokenizer
from vlmkit.models.siglip2 import hf_mapping
from vlmkit.models.siglip2.config import PRESETS, Siglip2Config
from vlmkit.models.siglip2.model import Siglip2TwoTower


def image_processor_config(cfg: Siglip2Config) -> dict:
    """transformers' Siglip2ImageProcessor metadata: aspect-preserving bilinear resize to at most
    `max_num_patches` patches of `patch_size` (the position table's size), mean = std = 0.5."""
    return {
        "image_processor_type": "Siglip2ImageProcessor", "processor_class": "Siglip2Processor",
        "do_resize": True, "resample": 2, "patch_size": cfg.vision.patch_size,
        "max_num_patches": cfg.vision.num_patches, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
    }


SIGLIP2 = register(FamilySpec(
    name="siglip2", kind="image-text", config_class=Siglip2Config, model_class=Siglip2TwoTower,
    model_types=("siglip2",), config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf,
    table=hf_mapping.two_tower_table, presets=PRESETS, with_tokenizer=with_tokenizer,
    preprocessor_config=image_processor_config, processor="vlmkit.data.processors.siglip2:build_processor",
    blocks=lambda model: [*model.vision_tower.layers, *model.text_tower.layers],
))
