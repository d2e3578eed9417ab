"""Mistral 3 <-> Hugging Face names and configs (transformers' Mistral3ForConditionalGeneration).

transformers 5.24's save_pretrained writes `vision_tower.*` (PixtralVisionModel's keys, no
`vision_model.` level), `multi_modal_projector.{norm, patch_merger.merging_layer, linear_1,
linear_2}.*` and `language_model.model.*` (+ `language_model.lm_head.*` when untied), LLaVA's
layout, so LLaVA's alias reading (transformers 5 `model.*` / top-level `lm_head.*`) and hub naming
are reused. Ours: `vision_tower.*`, `merger.{norm, merging_layer}`, `projector.linear_1/2`,
`language_model.*`.

Tied head: transformers' Mistral3Config defaults `tie_word_embeddings` to True, yet ties only
when the checkpoint has no separate head; the published configs (written by 4.x, which tied by
the text config) leave the key out and carry `language_model.lm_head.weight`. So the head is tied
when config.json says so explicitly at either level, and untied when neither says it.
"""

from dataclasses import replace

from vlmkit.errors import ConfigError
from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.common.mapping import Table
from vlmkit.models.llava.hf_mapping import normalise_key, to_hub_name
from vlmkit.models.mistral3.config import Mistral3Config
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.patch_merger import PatchMergerConfig
from vlmkit.models.pixtral import hf_mapping as pixtral_map
from vlmkit.models.registry import family_for_model_type, family_of

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table", "to_hub_name"]

_PROJECTOR: Table = [
    ("merger.norm", "multi_modal_projector.norm"),
    ("merger.merging_layer", "multi_modal_projector.patch_merger.merging_layer"),
    ("projector.linear_1", "multi_modal_projector.linear_1"),
    ("projector.linear_2", "multi_modal_projector.linear_2"),
]


def table(cfg: Mistral3Config) -> Table:
    """Ours -> canonical names (LLaVA's: `to_hub_name` writes the Pixtral tower unwrapped)."""
    return (
        [(f"vision_tower.{o}", f"vision_tower.{t}") for o, t in pixtral_map.table(cfg.vision)]
        + _PROJECTOR
        + [(f"language_model.{o}", f"language_model.{t}") for o, t in family_of(cfg.text).table(cfg.text)]
    )


def _feature_layer(d: dict) -> int:
    layer = d.get("vision_feature_layer", -1)
    if isinstance(layer, list):
        if len(layer) != 1:
            raise ValueError(f"vision_feature_layer {layer}: Mistral 3's projector reads one layer")
        layer = layer[0]
    return int(layer)


def config_from_hf(d: dict) -> Mistral3Config:
    vision_d = {"model_type": "pixtral", **(d.get("vision_config") or {})}
    if vision_d["model_type"] != "pixtral":
        raise ValueError(f"unsupported Mistral 3 vision model_type {vision_d['model_type']!r} (only pixtral)")
    text_d = {"model_type": "mistral", **(d.get("text_config") or {})}
    text = family_for_model_type(text_d["model_type"], "text_config").config_from_hf(text_d)
    if d.get("tie_word_embeddings", False):  # see the module doc: absent is untied
        text = replace(text, tie_embeddings=True)
    return Mistral3Config(
        vision=pixtral_map.config_from_hf(vision_d),
        text=text,
        merger=PatchMergerConfig(spatial_merge_size=int(d.get("spatial_merge_size", 2)),
                                 norm_eps=float(text_d.get("rms_norm_eps", text.rms_norm_eps))),
        projector=ConnectorConfig(
            hidden_act=activation_from_hf(d.get("projector_hidden_act", "gelu"), "projector_hidden_act"),
            bias=bool(d.get("multimodal_projector_bias", False)),
        ),
        vision_feature_layer=_feature_layer(d),
        image_token_id=d.get("image_token_index", d.get("image_token_id", 10)),
    )


def config_to_hf(c: Mistral3Config) -> dict:
    if c.merger.norm_eps != c.text.rms_norm_eps:
        raise ConfigError(f"Mistral 3's projector norm eps {c.merger.norm_eps} must equal the text rms_norm_eps "
                         f"{c.text.rms_norm_eps}: transformers reads one for both")
    vision = {k: v for k, v in pixtral_map.config_to_hf(c.vision).items() if k != "architectures"}
    return dict(
        architectures=["Mistral3ForConditionalGeneration"], model_type="mistral3", vision_config=vision,
        text_config=family_of(c.text).config_to_hf(c.text), image_token_index=c.image_token_id,
        spatial_merge_size=c.merger.spatial_merge_size, projector_hidden_act=TO_HF_ACTIVATION[c.projector.hidden_act],
        multimodal_projector_bias=c.projector.bias, vision_feature_layer=c.vision_feature_layer,
        tie_word_embeddings=c.text.tie_embeddings,
    )
