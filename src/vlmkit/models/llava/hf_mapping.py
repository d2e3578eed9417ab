"""LLaVA <-> Hugging Face names and configs (transformers' LlavaForConditionalGeneration).

We write the hub layout of llava-hf/llava-1.5-7b-hf (`vision_tower.vision_model.*`,
`multi_modal_projector.linear_1/2.*`, `language_model.model.*`, `language_model.lm_head.*`),
which is PaliGemma's, so the prefix aliases and hub naming are PaliGemma's too (reused, not
copied): transformers 5 layouts (`model.language_model.*`, `model.vision_tower.*`, top-level
`lm_head.*`) and 5.x's own `vision_tower.*` without `vision_model.` are read as well.
The tower is chosen by the vision `model_type`: CLIP, SigLIP, or Pixtral (mistral-community/
pixtral-12b), whose PixtralVisionModel keys have no `vision_model.` level and are written as such.
"""

from dataclasses import replace

from vlmkit.errors import ConfigError
from vlmkit.models.clip import hf_mapping as clip_map
from vlmkit.models.clip.config import ClipVisionConfig
from vlmkit.models.llava.config import LlavaConfig
from vlmkit.models.paligemma.hf_mapping import normalise_key
from vlmkit.models.paligemma.hf_mapping import to_hub_name as _wrapped_hub_name
from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig
from vlmkit.models.pixtral import hf_mapping as pixtral_map
from vlmkit.models.parts.vision import FeatureSelect
from vlmkit.models.registry import family_for_model_type, family_of
from vlmkit.models.siglip import hf_mapping as siglip_map
from vlmkit.models.siglip.config import SiglipVisionConfig
from vlmkit.models.common.mapping import Table

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table", "to_hub_name"]

# Connector names: ours (models.parts.connectors) == LLaVA's under `multi_modal_projector.`.
_PROJECTOR: Table = [("projector.linear_1", "multi_modal_projector.linear_1"),
                     ("projector.linear_2", "multi_modal_projector.linear_2")]

# HF vision `model_type` -> reader, and our vision config class -> writer.
_VISION_FROM_HF = {"clip_vision_model": clip_map.config_from_hf, "siglip_vision_model": siglip_map.vision_config_from_hf,
                   "pixtral": pixtral_map.config_from_hf}
_VISION_TO_HF = {ClipVisionConfig: clip_map.config_to_hf, SiglipVisionConfig: siglip_map.vision_config_to_hf,
                 PixtralVisionConfig: pixtral_map.config_to_hf}
# transformers' PixtralVisionModel has no `vision_model.` wrapper: its keys are written as they are.
_UNWRAPPED_TOWER = tuple(f"vision_tower.{theirs.split('.')[0]}." for _, theirs in pixtral_map.TABLE)

# transformers' LlavaConfig default vision tower (CLIP ViT-L/14-336), for a config.json without one.
_HF_VISION_DEFAULT = dict(model_type="clip_vision_model", intermediate_size=4096, hidden_size=1024, patch_size=14,
                          image_size=336, num_hidden_layers=24, num_attention_heads=16, projection_dim=768)


def table(cfg: LlavaConfig) -> Table:
    """Ours -> canonical names (`vision_tower.` is the vision root, see `to_hub_name`)."""
    return (
        [(f"vision_tower.{o}", f"vision_tower.{t}") for o, t in family_of(cfg.vision).table(cfg.vision)]
        + _PROJECTOR
        + [(f"language_model.{o}", f"language_model.{t}") for o, t in family_of(cfg.text).table(cfg.text)]
    )


def to_hub_name(key: str) -> str:
    """Canonical name -> the name written to disk: CLIP / SigLIP towers under `vision_model.`."""
    return key if key.startswith(_UNWRAPPED_TOWER) else _wrapped_hub_name(key)


def config_from_hf(d: dict) -> LlavaConfig:
    vision_d = d.get("vision_config") or _HF_VISION_DEFAULT
    kind = vision_d.get("model_type", "clip_vision_model")
    if kind not in _VISION_FROM_HF:
        raise ValueError(f"unsupported LLaVA vision model_type {kind!r} (supported: {sorted(_VISION_FROM_HF)})")
    text_d = {"model_type": "llama", **(d.get("text_config") or {})}
    text = family_for_model_type(text_d["model_type"], "text_config").config_from_hf(text_d)
    if d.get("tie_word_embeddings"):  # transformers ties if either level says so
        text = replace(text, tie_embeddings=True)
    layer = d.get("vision_feature_layer", -2)
    return LlavaConfig(
        vision=_VISION_FROM_HF[kind](vision_d),
        text=text,
        projector=ConnectorConfig(
            hidden_act=activation_from_hf(d.get("projector_hidden_act", "gelu"), "projector_hidden_act"),
            bias=bool(d.get("multimodal_projector_bias", True)),
        ),
        features=FeatureSelect(
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
        ),
        image_token_id=d.get("image_token_index", d.get("image_token_id", 32000)),
    )


def config_to_hf(c: LlavaConfig) -> dict:
    p = c.projector
    if p.pixel_shuffle != 1 or p.norm or p.num_layers != 2:
        raise ConfigError("a LLaVA projector with pixel shuffle, a LayerNorm or one layer has no HF LlavaConfig equivalent")
    if type(c.vision) not in _VISION_TO_HF:
        raise ConfigError(f"no HF vision config for {type(c.vision).__name__}")
    layer = c.features.vision_feature_layer
    return dict(
        architectures=["LlavaForConditionalGeneration"], model_type="llava",
        vision_config={k: v for k, v in _VISION_TO_HF[type(c.vision)](c.vision).items() if k != "architectures"},
        text_config=family_of(c.text).config_to_hf(c.text), image_token_index=c.image_token_id,
        image_seq_length=c.num_image_tokens, projector_hidden_act=TO_HF_ACTIVATION[p.hidden_act],
        multimodal_projector_bias=p.bias, vision_feature_layer=layer if isinstance(layer, int) else list(layer),
        vision_feature_select_strategy=c.features.vision_feature_select_strategy,
        tie_word_embeddings=c.text.tie_embeddings,
    )
