"""Idefics3 / SmolVLM <-> Hugging Face names and configs (transformers' Idefics3- and
SmolVLMForConditionalGeneration).

Layout on disk (written by transformers 4.46+ and 5.24 alike, and by every published
HuggingFaceTB/SmolVLM-* checkpoint): `model.vision_model.*` (SigLIP names under the tower root),
`model.connector.modality_projection.proj.weight`, `model.text_model.*` (a LlamaModel: the text
family's names without their `model.` prefix) and a top-level `lm_head.weight` (absent when
`tie_word_embeddings`, which only the top level of config.json sets for these classes).

Canonical names (what `table` maps to) reuse the vision and text families' own tables under
`vision_tower.` and `language_model.`; `to_hub_name` / `normalise_key` move them to the layout.
"""

from dataclasses import replace

from vlmkit.errors import ConfigError
from vlmkit.models.common.mapping import Table, prefixed
from vlmkit.models.idefics3.config import Idefics3Config, idefics3_connector
from vlmkit.models.registry import family_for_model_type, family_of
from vlmkit.models.siglip import hf_mapping as siglip_map
from vlmkit.models.siglip.config import SiglipVisionConfig

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table", "to_hub_name"]

_CONNECTOR: Table = [("connector.linear_1", "connector.modality_projection.proj")]

# (canonical prefix, hub prefix); `normalise_key` applies them right to left.
_HUB_PREFIXES = [
    ("vision_tower.", "model.vision_model."),
    ("connector.", "model.connector."),
    ("language_model.model.", "model.text_model."),
    ("language_model.lm_head.", "lm_head."),
]

# transformers' Idefics3VisionConfig defaults, for fields a config.json leaves out.
_HF_VISION_DEFAULTS = dict(hidden_size=1152, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=16,
                           num_channels=3, image_size=224, patch_size=32, hidden_act="gelu_pytorch_tanh",
                           layer_norm_eps=1e-6)
_ARCHITECTURES = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}


def table(cfg: Idefics3Config) -> Table:
    """Ours -> canonical names (see the module docstring)."""
    vision, text = siglip_map.vision_table(cfg.vision), family_of(cfg.text).table(cfg.text)
    return prefixed("vision_tower.", vision) + _CONNECTOR + prefixed("language_model.", text)


def to_hub_name(key: str) -> str:
    for canonical, hub in _HUB_PREFIXES:
        if key.startswith(canonical):
            return hub + key[len(canonical):]
    return key


def normalise_key(key: str) -> str:
    for canonical, hub in _HUB_PREFIXES:
        if key.startswith(hub):
            return canonical + key[len(hub):]
    return key


def config_from_hf(d: dict) -> Idefics3Config:
    kind = d.get("model_type", "idefics3")
    if kind not in _ARCHITECTURES:
        raise ValueError(f"unsupported Idefics3 model_type {kind!r} (supported: {sorted(_ARCHITECTURES)})")
    # transformers' Idefics3Config builds a missing text_config as Llama with rms_norm_eps 1e-5.
    text_d = {"model_type": "llama", **(d.get("text_config") or {"rms_norm_eps": 1e-5})}
    if "vocab_size" in d:  # older configs state it only at the top level
        text_d.setdefault("vocab_size", d["vocab_size"])
    text = family_for_model_type(text_d["model_type"], "text_config").config_from_hf(text_d)
    # Only the top-level flag ties lm_head to the embeddings (the text model has no head).
    text = replace(text, tie_embeddings=bool(d.get("tie_word_embeddings", False)))
    vision_d = {**_HF_VISION_DEFAULTS, **(d.get("vision_config") or {})}
    if vision_d["hidden_act"] != "gelu_pytorch_tanh":
        raise ValueError(f"unsupported Idefics3 vision hidden_act {vision_d['hidden_act']!r}")
    vision = SiglipVisionConfig(**siglip_map.vision_shape_from_hf(vision_d), bucket_positions=True)
    return Idefics3Config(
        vision=vision, text=text, connector=idefics3_connector(int(d.get("scale_factor", 2))),
        image_token_id=int(d.get("image_token_id", 128257)), keep_first_frame=kind == "smolvlm", hf_model_type=kind,
    )


def config_to_hf(c: Idefics3Config) -> dict:
    k = c.connector
    if k.norm or k.num_layers != 1 or k.bias or not c.vision.bucket_positions:
        raise ConfigError("an Idefics3 connector with a LayerNorm, two layers or a bias, or a tower without "
                          "bucketed positions, has no transformers equivalent")
    if c.keep_first_frame != (c.hf_model_type == "smolvlm"):
        raise ConfigError(f"keep_first_frame={c.keep_first_frame} has no transformers {c.hf_model_type} equivalent")
    vision = {key: v for key, v in siglip_map.vision_config_to_hf(c.vision).items() if key != "vision_use_head"}
    vision.update(model_type=f"{c.hf_model_type}_vision")
    return dict(
        architectures=[_ARCHITECTURES[c.hf_model_type]], model_type=c.hf_model_type, vision_config=vision,
        text_config=family_of(c.text).config_to_hf(c.text), image_token_id=c.image_token_id,
        scale_factor=k.pixel_shuffle, tie_word_embeddings=c.text.tie_embeddings,
    )
