"""SigLIP <-> Hugging Face names and configs (transformers' SiglipVisionModel layout).

Names on the right are relative to the vision model root; the hub checkpoints put them under
`vision_model.` (or `vision_tower.vision_model.` inside PaliGemma), transformers 5 saves them
without it. The loaders accept both (see `vlmkit.weights.hf`).
"""

from vlmkit.models.siglip.config import SiglipVisionConfig
from vlmkit.weights.convert import Table

VISION_TABLE: Table = [
    ("patch_embedding", "embeddings.patch_embedding"),
    ("position_embedding", "embeddings.position_embedding"),
    ("layers.{}", "encoder.layers.{}"),
    ("post_layernorm", "post_layernorm"),
    ("head", "head"),
]

# transformers' SiglipVisionConfig defaults, used for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=16, layer_norm_eps=1e-6, vision_use_head=True,
    hidden_act="gelu_pytorch_tanh",
)


def vision_config_from_hf(d: dict) -> SiglipVisionConfig:
    """HF `vision_config` dict -> SiglipVisionConfig (missing fields take transformers' defaults)."""
    d = {**_HF_DEFAULTS, **d}
    if d["hidden_act"] not in ("gelu_pytorch_tanh", "gelu_fast"):
        raise ValueError(f"unsupported SigLIP activation {d['hidden_act']!r}")
    return SiglipVisionConfig(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        num_channels=d["num_channels"], image_size=d["image_size"], patch_size=d["patch_size"],
        layer_norm_eps=d["layer_norm_eps"], use_head=bool(d["vision_use_head"]),
    )


def vision_config_to_hf(c: SiglipVisionConfig) -> dict:
    return dict(
        model_type="siglip_vision_model", hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_channels=c.num_channels, image_size=c.image_size,
        patch_size=c.patch_size, layer_norm_eps=c.layer_norm_eps, vision_use_head=c.use_head,
        hidden_act="gelu_pytorch_tanh", attention_dropout=0.0,
    )
