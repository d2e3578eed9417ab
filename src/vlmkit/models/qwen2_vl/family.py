"""Qwen2-VL registry record (Qwen/Qwen2-VL-* folders, transformers' Qwen2VLForConditionalGeneration);
its processor is vlmkit.data.processors.qwen2_vl (images, and videos as frame lists)."""

from dataclasses import replace

from vlmkit.errors import TokenizerError
from vlmkit.models.qwen2_vl import hf_mapping
from vlmkit.models.qwen2_vl.config import PRESETS, Qwen2VLConfig
from vlmkit.models.qwen2_vl.model import Qwen2VL, Qwen2VLGeneration
from vlmkit.models.registry import FamilySpec, register, tied_head_dropped, tokenizer_fields


# config field -> token; only `<|image_pad|>` is required (the others are metadata transformers reads).
_TOKEN_FIELDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                 "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
# Qwen2-VL-Instruct's preprocessor_config.json: CLIP's statistics, min / max pixels.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def with_tokenizer(cfg: Qwen2VLConfig, tok, vocab_size: int | None = None) -> Qwen2VLConfig:
    """`cfg` with the tokenizer's vocabulary / pad / bos / eos ids and its vision token ids."""
    if tok.token_to_id("<|image_pad|>") is None:
        raise TokenizerError(f"tokenizer in {tok.name} has no <|image_pad|> token")
    ids = {f: tok.token_to_id(t) for f, t in _TOKEN_FIELDS.items() if tok.token_to_id(t) is not None}
    return replace(cfg, text=replace(cfg.text, **tokenizer_fields(tok, vocab_size)), **ids)


def preprocessor_config(cfg: Qwen2VLConfig, processor_class: str = "Qwen2VLProcessor") -> dict:
    """Qwen2VLImageProcessor metadata: the tower's patch / merge / temporal sizes, the published
    pixel budget (size.shortest_edge / longest_edge = min / max pixels), bicubic, CLIP normalisation
    (Qwen2.5-VL's is the same with its own `processor_class`)."""
    v = cfg.vision
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class,
        "do_resize": True, "size": {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}, "resample": 3,
        "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size, "merge_size": v.spatial_merge_size,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True,
    }


QWEN2_VL = register(FamilySpec(
    name="qwen2_vl", kind="vlm", config_class=Qwen2VLConfig, model_class=Qwen2VL, model_types=("qwen2_vl",),
    config_from_hf=hf_mapping.config_from_hf, config_to_hf=hf_mapping.config_to_hf, table=hf_mapping.table,
    normalise_key=hf_mapping.normalise_key, dropped_keys=tied_head_dropped(), presets=PRESETS,
    with_tokenizer=with_tokenizer, preprocessor_config=preprocessor_config,
    processor="vlmkit.data.processors.qwen2_vl:build_processor",
    processor_files="vlmkit.data.processors.qwen2_vl:processor_files",
    blocks=lambda m: [*m.visual.blocks, *m.language_model.layers],
    generation=Qwen2VLGeneration(),
))
