"""SigLIP 2 NaFlex <-> Hugging Face names and configs (transformers' Siglip2Model, "siglip2").

The weight layout is SigLIP's (`vision_model.embeddings.patch_embedding` is a Linear here, a conv
there; the names are the same), so the table is SigLIP's two-tower table. Only the configs differ:
the vision config has `num_patches` (the position table) instead of `image_size`, and both
sub-configs carry their own model_types.
"""

from vlmkit.models.common.activations import HF_ACTIVATIONS
from vlmkit.models.siglip import hf_mapping as siglip
from vlmkit.models.siglip2.config import Siglip2Config, Siglip2VisionConfig

# The mapping table: SigLIP's (ours -> hub layout), used in both directions.
two_tower_table = siglip.two_tower_table

# transformers' Siglip2VisionConfig defaults, for fields a config.json leaves out.
_HF_VISION_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
    patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True, num_patches=256,
)


def vision_config_from_hf(d: dict) -> Siglip2VisionConfig:
    """HF Siglip2 `vision_config` dict -> Siglip2VisionConfig (missing fields: transformers' defaults)."""
    d = {**_HF_VISION_DEFAULTS, **d}
    if d["hidden_act"] not in ("gelu_pytorch_tanh",):
        raise ValueError(f"unsupported SigLIP 2 activation {d['hidden_act']!r}")
    return Siglip2VisionConfig(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"], patch_size=d["patch_size"], num_patches=d["num_patches"],
        num_channels=d["num_channels"], layer_norm_eps=d["layer_norm_eps"], use_head=bool(d["vision_use_head"]),
        hidden_act=HF_ACTIVATIONS[d["hidden_act"]],
    )


def vision_config_to_hf(c: Siglip2VisionConfig) -> dict:
    return dict(
        model_type="siglip2_vision_model", hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_channels=c.num_channels,
        patch_size=c.patch_size, num_patches=c.num_patches, layer_norm_eps=c.layer_norm_eps,
        vision_use_head=c.use_head, hidden_act="gelu_pytorch_tanh", attention_dropout=0.0,
    )


def config_from_hf(d: dict) -> Siglip2Config:
    """HF Siglip2Config dict -> Siglip2Config (the text config is SigLIP's, same defaults)."""
    return Siglip2Config(
        vision=vision_config_from_hf(d.get("vision_config") or {}),
        text=siglip.text_config_from_hf(d.get("text_config") or {}),
        contrastive_loss=d.get("contrastive_loss", "sigmoid"),
    )


def config_to_hf(c: Siglip2Config) -> dict:
    text = {**siglip.text_config_to_hf(c.text), "model_type": "siglip2_text_model"}
    return dict(
        architectures=["Siglip2Model"], model_type="siglip2", text_config=text,
        vision_config=vision_config_to_hf(c.vision), contrastive_loss=c.contrastive_loss, initializer_factor=1.0,
    )
