"""DeepSeek-VL registry records: model_type "deepseek_vl" (deepseek-community/deepseek-vl-1.3b-*) and
"deepseek_vl_hybrid" (the SAM + SigLIP variant of deepseek-community/deepseek-vl-7b-*)."""

from dataclasses import replace

from vlmkit.errors import TokenizerError
from vlmkit.models.clip.family import CLIP_MEAN, CLIP_STD
from vlmkit.models.deepseek_vl import hf_mapping
from vlmkit.models.deepseek_vl.config import HYBRID_PRESETS, PRESETS, DeepseekVLConfig, DeepseekVLHybridConfig
from vlmkit.models.deepseek_vl.hybrid import DeepseekVLHybrid
from vlmkit.models.deepseek_vl.model import DeepseekVL
from vlmkit.models.parts.placeholders import PlaceholderGeneration
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields, vision_language_blocks


def with_tokenizer(cfg, tok, vocab_size: int | None = None) -> DeepseekVLConfig:
    """`cfg` with the tokenizer's vocabulary size and its pad / bos / eos / `<image_placeholder>` ids
    (the published tokenizers' image token, id 100015)."""
    image_id = tok.token_to_id("<image_placeholder>")
    if image_id is None:
        raise TokenizerError("the tokenizer has no <image_placeholder> token, which DeepSeek-VL needs")
    return replace(cfg, text=replace(cfg.text, **tokenizer_fields(tok, vocab_size)), image_token_id=image_id)


def preprocessor_config(cfg: DeepseekVLConfig) -> dict:
    """transformers' DeepseekVLImageProcessor metadata: longest side to S, pad to S x S with the mean."""
    side = cfg.vision.image_size
    return {
        "image_processor_type": "DeepseekVLImageProcessor", "processor_class": "DeepseekVLProcessor",
        "do_resize": True, "size": {"height": side, "width": side}, "min_size": 14, "resample": 3,
        "do_pad": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True,
        "num_image_tokens": cfg.num_image_tokens,
    }


def hybrid_preprocessor_config(cfg: DeepseekVLHybridConfig) -> dict:
    """transformers' DeepseekVLHybridImageProcessor metadata: the high-resolution view's fields too."""
    side = cfg.high_res_vision.image_size
    return {**preprocessor_config(cfg), "image_processor_type": "DeepseekVLHybridImageProcessor",
            "processor_class": "DeepseekVLHybridProcessor", "high_res_size": {"height": side, "width": side},
            "high_res_resample": 3, "high_res_image_mean": CLIP_MEAN, "high_res_image_std": CLIP_STD}


DEEPSEEK_VL = register(FamilySpec(
    name="deepseek_vl", kind="vlm", config_class=DeepseekVLConfig, model_class=DeepseekVL,
    model_types=("deepseek_vl",), config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf,
    table=hf_mapping.table, normalise_key=hf_mapping.normalise_key,
    dropped_keys=tied_head_dropped(),
    presets=PRESETS, with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor_files="vlmkit.data.processors.deepseek_vl:processor_files",
    processor="vlmkit.data.processors.deepseek_vl:build_processor",
    blocks=vision_language_blocks,
    generation=PlaceholderGeneration(prefix_lm=False, position_start=0),
))


DEEPSEEK_VL_HYBRID = register(FamilySpec(
    name="deepseek_vl_hybrid", kind="vlm", config_class=DeepseekVLHybridConfig, model_class=DeepseekVLHybrid,
    model_types=("deepseek_vl_hybrid",), config_from_hf=hf_mapping.hybrid_config_from_hf,
    config_to_hf=hf_mapping.hybrid_config_to_hf, table=hf_mapping.hybrid_table, normalise_key=hf_mapping.normalise_key,
    dropped_keys=DEEPSEEK_VL.dropped_keys, presets=HYBRID_PRESETS, with_tokenizer=with_tokenizer,
    preprocessor_config=hybrid_preprocessor_config,
    processor_files="vlmkit.data.processors.deepseek_vl:hybrid_processor_files",
    processor="vlmkit.data.processors.deepseek_vl:build_hybrid_processor",
    blocks=lambda model: [*model.vision_tower.layers, *model.high_res_vision_tower.layers,
                          *model.language_model.layers],
    # Both towers' pixels go to encode_images (as transformers' DeepseekVLHybridProcessor gives them).
    generation=PlaceholderGeneration(image_inputs=("pixel_values", "high_res_pixel_values")),
))
