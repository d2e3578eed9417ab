"""Qwen2.5-VL registry record (Qwen/Qwen2.5-VL-* folders, transformers'
Qwen2_5_VLForConditionalGeneration). Tokens, weight layout, generation adapter and processor
(transformers' Qwen2_5_VLProcessor uses the Qwen2-VL image processor) are Qwen2-VL's."""

from vlmkit.models.qwen2_5_vl import hf_mapping
from vlmkit.models.qwen2_5_vl.config import PRESETS, Qwen2_5_VLConfig
from vlmkit.models.qwen2_vl.family import preprocessor_config, with_tokenizer
from vlmkit.models.qwen2_5_vl.model import Qwen2_5_VL
from vlmkit.models.qwen2_vl.model import Qwen2VLGeneration
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped

QWEN2_5_VL = register(FamilySpec(
    name="qwen2_5_vl", kind="vlm", config_class=Qwen2_5_VLConfig, model_class=Qwen2_5_VL, model_types=("qwen2_5_vl",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key, dropped_keys=tied_head_dropped(), presets=PRESETS,
    with_tokenizer=with_tokenizer, preprocessor_config=lambda cfg: preprocessor_config(cfg, "Qwen2_5_VLProcessor"),
    processor="vlmkit.data.processors.qwen2_vl:build_processor",
    processor_files="vlmkit.data.processors.qwen2_vl:processor_files_2_5",
    blocks=lambda m: [*m.visual.blocks, *m.language_model.layers],
    generation=Qwen2VLGeneration(),
))
