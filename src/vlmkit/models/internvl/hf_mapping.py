"""InternVL <-> Hugging Face names and configs (transformers' InternVLForConditionalGeneration).

Written layout: what transformers 5.24's save_pretrained writes, `vision_tower.*` (no
`vision_model.` level), `multi_modal_projector.{layer_norm,linear_1,linear_2}.*`,
`language_model.model.*` and `language_model.lm_head.weight` (absent when tied). Read as well:
transformers 5's module names (`model.vision_tower.*`, `model.language_model.*`,
`model.multi_modal_projector.*`, top-level `lm_head.*`), through PaliGemma's prefix aliases.
The original (trust_remote_code) InternVLChatModel layout is not read: its fused `qkv` needs
a tensor split, not a renaming.
"""

from dataclasses import replace

from vlmkit.errors import ConfigError
from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.common.mapping import Table
from vlmkit.models.internvl.config import InternVLConfig
from vlmkit.models.paligemma.hf_mapping import normalise_key
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.intern_vit import InternVitConfig
from vlmkit.models.parts.vision import FeatureSelect
from vlmkit.models.registry import family_for_model_type, family_of

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table"]

# Ours (models.parts.intern_vit) -> transformers' InternVLVisionModel, under `vision_tower.`.
_VISION: Table = [
    ("class_embedding", "embeddings.cls_token"),
    ("position_embedding", "embeddings.position_embeddings"),
    ("patch_embedding", "embeddings.patch_embeddings.projection"),
    ("layers.{}.norm1", "encoder.layer.{}.layernorm_before"),
    ("layers.{}.norm2", "encoder.layer.{}.layernorm_after"),
    ("layers.{}.attn.out_proj", "encoder.layer.{}.attention.projection_layer"),
    ("layers.{}.attn", "encoder.layer.{}.attention"),  # q/k/v_proj, q/k_norm: same names
    ("layers.{}.mlp", "encoder.layer.{}.mlp"),
    ("layers.{}.lambda_1", "encoder.layer.{}.lambda_1"),
    ("layers.{}.lambda_2", "encoder.layer.{}.lambda_2"),
    ("final_norm", "layernorm"),
]
_PROJECTOR: Table = [(f"projector.{n}", f"multi_modal_projector.{n}") for n in ("layer_norm", "linear_1", "linear_2")]

# transformers' InternVLVisionConfig defaults, for fields a config.json leaves out.
_HF_VISION_DEFAULTS = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, attention_bias=False, use_qk_norm=False,
    intermediate_size=4096, hidden_act="gelu", norm_type="layer_norm", layer_norm_eps=1e-6, image_size=448,
    patch_size=14, num_channels=3, use_mask_token=False, use_absolute_position_embeddings=True,
    layer_scale_init_value=0.1, use_mean_pooling=True,
)


def table(cfg: InternVLConfig) -> Table:
    return (
        [(f"vision_tower.{o}", f"vision_tower.{t}") for o, t in _VISION]
        + _PROJECTOR
        + [(f"language_model.{o}", f"language_model.{t}") for o, t in family_of(cfg.text).table(cfg.text)]
    )


def _square(value, name: str) -> int:
    """An int, or a [h, w] pair with h == w (transformers stores both as pairs)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"vision_config.{name} {list(value)} is not square")
        value = value[0]
    return int(value)


def vision_config_from_hf(v: dict) -> InternVitConfig:
    v = {**_HF_VISION_DEFAULTS, **v}
    if v["use_mask_token"] or not v["use_absolute_position_embeddings"]:
        raise ValueError("vision_config: use_mask_token / no absolute position embeddings are not supported")
    return InternVitConfig(
        hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"], num_layers=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"], image_size=_square(v["image_size"], "image_size"),
        patch_size=_square(v["patch_size"], "patch_size"), num_channels=v["num_channels"],
        layer_norm_eps=v["layer_norm_eps"], qkv_bias=bool(v["attention_bias"]), qk_norm=bool(v["use_qk_norm"]),
        norm_type=v["norm_type"], layer_scale_init=float(v["layer_scale_init_value"]),
        final_norm=not v["use_mean_pooling"], hidden_act=activation_from_hf(v["hidden_act"], "vision_config.hidden_act"),
    )


def vision_config_to_hf(c: InternVitConfig) -> dict:
    return dict(
        model_type="internvl_vision", hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, image_size=[c.image_size] * 2,
        patch_size=[c.patch_size] * 2, num_channels=c.num_channels, layer_norm_eps=c.layer_norm_eps,
        attention_bias=c.qkv_bias, use_qk_norm=c.qk_norm, norm_type=c.norm_type,
        layer_scale_init_value=c.layer_scale_init, use_mean_pooling=not c.final_norm,
        hidden_act=TO_HF_ACTIVATION[c.hidden_act], use_mask_token=False, use_absolute_position_embeddings=True,
    )


def config_from_hf(d: dict) -> InternVLConfig:
    text_d = {"model_type": "qwen2", **(d.get("text_config") or {})}
    text = family_for_model_type(text_d["model_type"], "text_config").config_from_hf(text_d)
    # Only the top level decides (the text sub-model has no head); transformers' default ties.
    text = replace(text, tie_embeddings=bool(d.get("tie_word_embeddings", True)))
    ratio = float(d.get("downsample_ratio", 0.5))
    shuffle = int(1 / ratio)
    if shuffle * ratio != 1:
        raise ValueError(f"downsample_ratio {ratio} is not 1 / an integer")
    layer = d.get("vision_feature_layer", -1)
    return InternVLConfig(
        vision=vision_config_from_hf(d.get("vision_config") or {}),
        text=text,
        projector=ConnectorConfig(pixel_shuffle=shuffle, norm=True, layer_norm_eps=1e-5,
                                  hidden_act=activation_from_hf(d.get("projector_hidden_act", "gelu"),
                                                                "projector_hidden_act")),
        features=FeatureSelect(vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
                               vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default")),
        image_token_id=d.get("image_token_id", d.get("image_token_index", 151667)),
    )


def config_to_hf(c: InternVLConfig) -> dict:
    p = c.projector
    if not p.norm or p.num_layers != 2 or not p.bias or p.layer_norm_eps != 1e-5:
        raise ConfigError("an InternVL connector without its LayerNorm (eps 1e-5) and two biased layers "
                         "has no HF InternVLConfig equivalent")
    return dict(
        architectures=["InternVLForConditionalGeneration"], model_type="internvl",
        vision_config=vision_config_to_hf(c.vision), text_config=family_of(c.text).config_to_hf(c.text),
        image_token_id=c.image_token_id, image_seq_length=c.num_image_tokens, downsample_ratio=1 / p.pixel_shuffle,
        projector_hidden_act=TO_HF_ACTIVATION[p.hidden_act], vision_feature_layer=c.features.vision_feature_layer,
        vision_feature_select_strategy=c.features.vision_feature_select_strategy,
        tie_word_embeddings=c.text.tie_embeddings,
    )
