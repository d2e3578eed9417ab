"""LLaVA-NeXT registry record (llava-hf/llava-v1.6-* folders): LLaVA's record with the anyres
model, its mapping, presets and processor; the adapter also hands `image_sizes` to the model."""

from vlmkit.models.clip.family import image_processor_config
from vlmkit.models.llava.family import LLAVA, with_tokenizer
from vlmkit.models.llava_next import hf_mapping
from vlmkit.models.llava_next.config import PRESETS, LlavaNextConfig
from vlmkit.models.llava_next.model import LlavaNext
from vlmkit.models.parts.placeholders import PlaceholderGeneration
from vlmkit.models.registry import FamilySpec, register


def preprocessor_config(cfg: LlavaNextConfig) -> dict:
    """transformers' LlavaNextImageProcessor metadata: CLIP's resize / crop / normalisation per tile."""
    return {**image_processor_config(cfg.vision.image_size), "image_processor_type": "LlavaNextImageProcessor",
            "image_grid_pinpoints": [list(p) for p in cfg.image_grid_pinpoints], "do_pad": True,
            "processor_class": "LlavaNextProcessor"}


LLAVA_NEXT = register(FamilySpec(
    name="llava_next", kind="vlm", config_class=LlavaNextConfig, model_class=LlavaNext, model_types=("llava_next",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key, to_hub_name=hf_mapping.to_hub_name, dropped_keys=LLAVA.dropped_keys,
    presets=PRESETS, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.data.processors.llava_next:build_processor", blocks=LLAVA.blocks,
    processor_files="vlmkit.data.processors.llava_next:processor_files",
    generation=PlaceholderGeneration(prefix_lm=False, position_start=0, image_inputs=("pixel_values", "image_sizes")),
))
