"""DeepSeek-VL <-> Hugging Face names and configs (transformers' DeepseekVLForConditionalGeneration).

The layout transformers 5 writes, which we write too: `model.vision_model.*` (a SiglipVisionModel,
MAP head included), `model.aligner.linear1/2.*`, `model.language_model.*` (a LlamaModel) and a
top-level `lm_head.*` (absent when tied, transformers' default). transformers 4.x nested the tower
once more (`model.vision_model.vision_model.*`); that is read as well.
"""

from dataclasses import replace

from vlmkit.models.common.mapping import Table
from vlmkit.models.deepseek_vl.config import DEEPSEEK_VL_IMAGE_TOKEN_ID, DeepseekVLConfig
from vlmkit.models.registry import family_for_model_type, family_of
from vlmkit.models.siglip import hf_mapping as siglip_map

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table"]

_ALIGNER: Table = [("aligner.linear_1", "model.aligner.linear1"), ("aligner.linear_2", "model.aligner.linear2")]
_OLD_VISION, _VISION = "model.vision_model.vision_model.", "model.vision_model."


def _text_name(theirs: str) -> str:
    """A causal-LM decoder name (`model.*`, `lm_head`) -> its place in DeepseekVLForConditionalGeneration."""
    return "model.language_model." + theirs.removeprefix("model.") if theirs.startswith("model.") else theirs


def table(cfg: DeepseekVLConfig) -> Table:
    return (
        [(f"vision_tower.{o}", _VISION + t) for o, t in siglip_map.vision_table(cfg.vision)]
        + _ALIGNER
        + [(f"language_model.{o}", _text_name(t)) for o, t in family_of(cfg.text).table(cfg.text)]
    )


def normalise_key(key: str) -> str:
    return _VISION + key[len(_OLD_VISION):] if key.startswith(_OLD_VISION) else key


def config_from_hf(d: dict) -> DeepseekVLConfig:
    vision_d = d.get("vision_config") or {}
    if vision_d.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise ValueError(f"unsupported DeepSeek-VL vision model_type {vision_d['model_type']!r} "
                         "(supported: siglip_vision_model)")
    text_d = {"model_type": "llama", **(d.get("text_config") or {})}
    text = family_for_model_type(text_d["model_type"], "text_config").config_from_hf(text_d)
    if d.get("tie_word_embeddings", True):  # transformers' DeepseekVLConfig ties by default
        text = replace(text, tie_embeddings=True)
    return DeepseekVLConfig(vision=siglip_map.vision_config_from_hf(vision_d), text=text,
                            image_token_id=d.get("image_token_id", DEEPSEEK_VL_IMAGE_TOKEN_ID))


def config_to_hf(c: DeepseekVLConfig) -> dict:
    return dict(
        architectures=["DeepseekVLForConditionalGeneration"], model_type="deepseek_vl",
        vision_config=siglip_map.vision_config_to_hf(c.vision), text_config=family_of(c.text).config_to_hf(c.text),
        image_token_id=c.image_token_id, tie_word_embeddings=c.text.tie_embeddings,
    )
