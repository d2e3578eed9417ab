"""SigLIP <-> Hugging Face names and configs (transformers' SiglipVisionModel layout).

Names on the right are relative to the vision model root; the hub checkpoints put them under
`vision_model.` (or `vision_tower.vision_model.` inside PaliGemma), transformers 5 saves them
without it. The loaders accept both (see `vlmkit.weights.hf`).
"""

from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.common.mapping import Table
from vlmkit.models.siglip.config import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

VISION_TABLE: Table = [
    ("patch_embedding", "embeddings.patch_embedding"),
    ("position_embedding", "embeddings.position_embedding"),
    ("layers.{}", "encoder.layers.{}"),
    ("post_layernorm", "post_layernorm"),
    ("head", "head"),
]
# Entries of the CLIP switches (class token, pre-LayerNorm; HF spells it "pre_layrnorm").
_CLASS_TOKEN: Table = [("class_embedding", "embeddings.class_embedding")]
_PRE_NORM: Table = [("pre_layernorm", "pre_layrnorm")]


def vision_table(cfg: SiglipVisionConfig) -> Table:
    """The vision table for this config: VISION_TABLE plus the entries its switches add."""
    return VISION_TABLE + (_CLASS_TOKEN if cfg.class_token else []) + (_PRE_NORM if cfg.pre_norm else [])


# transformers' SiglipVisionConfig defaults, used for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    num_channels=3, image_size=224, patch_size=16, layer_norm_eps=1e-6, vision_use_head=True,
    hidden_act="gelu_pytorch_tanh",
)


def vision_shape_from_hf(d: dict) -> dict:
    """The ViT shape fields shared by SigLIP and CLIP vision configs: HF dict -> our kwargs."""
    return dict(
        hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        num_channels=d["num_channels"], image_size=d["image_size"], patch_size=d["patch_size"],
        layer_norm_eps=d["layer_norm_eps"],
    )


def vision_shape_to_hf(c: SiglipVisionConfig) -> dict:
    """The inverse of `vision_shape_from_hf`."""
    return dict(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_channels=c.num_channels, image_size=c.image_size,
        patch_size=c.patch_size, layer_norm_eps=c.layer_norm_eps, attention_dropout=0.0,
    )


def vision_config_from_hf(d: dict) -> SiglipVisionConfig:
    """HF `vision_config` dict -> SiglipVisionConfig (missing fields take transformers' defaults)."""
    d = {**_HF_DEFAULTS, **d}
    # Published SigLIP towers use the tanh GELU ("gelu_fast" in some copies, read as the same op);
    # DeepSeek-VL's converted SigLIP-L says "gelu" (the erf form), which is a different function.
    act = "gelu_tanh" if d["hidden_act"] == "gelu_fast" else activation_from_hf(d["hidden_act"], "vision_config.hidden_act")
    return SiglipVisionConfig(**vision_shape_from_hf(d), use_head=bool(d["vision_use_head"]), hidden_act=act)


def vision_config_to_hf(c: SiglipVisionConfig) -> dict:
    return dict(
        model_type="siglip_vision_model", **vision_shape_to_hf(c), vision_use_head=c.use_head,
        hidden_act=TO_HF_ACTIVATION[c.hidden_act],
    )


# --- Text tower and two-tower model (transformers' SiglipModel, model_type "siglip") -------------

# Ours (relative to the text tower) -> HF (relative to `text_model.`).
TEXT_TABLE: Table = [
    ("token_embedding", "embeddings.token_embedding"),
    ("position_embedding", "embeddings.position_embedding"),
    ("layers.{}", "encoder.layers.{}"),
    ("final_layer_norm", "final_layer_norm"),
    ("head", "head"),
]

# transformers' SiglipTextConfig defaults.
_HF_TEXT_DEFAULTS = dict(
    vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6, pad_token_id=1, bos_token_id=49406, eos_token_id=49407, projection_size=None,
)


def two_tower_table(cfg: SiglipConfig) -> Table:
    """Ours -> the hub layout of a SiglipModel checkpoint (the CLIP-style variant has no bias)."""
    scalars = [("logit_scale", "logit_scale")] + ([("logit_bias", "logit_bias")] if cfg.has_bias else [])
    return (
        [(f"vision_tower.{o}", f"vision_model.{t}") for o, t in VISION_TABLE]
        + [(f"text_tower.{o}", f"text_model.{t}") for o, t in TEXT_TABLE]
        + scalars
    )


def text_config_from_hf(d: dict) -> SiglipTextConfig:
    """HF `text_config` dict -> SiglipTextConfig (missing fields take transformers' defaults)."""
    d = {**_HF_TEXT_DEFAULTS, **d}
    if d["hidden_act"] not in ("gelu_pytorch_tanh", "gelu_fast"):
        raise ValueError(f"unsupported SigLIP activation {d['hidden_act']!r}")
    return SiglipTextConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        max_position_embeddings=d["max_position_embeddings"], projection_size=d["projection_size"],
        layer_norm_eps=d["layer_norm_eps"], pad_token_id=d["pad_token_id"], bos_token_id=d["bos_token_id"],
        eos_token_id=d["eos_token_id"],
    )


def text_config_to_hf(c: SiglipTextConfig) -> dict:
    return dict(
        model_type="siglip_text_model", vocab_size=c.vocab_size, hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        max_position_embeddings=c.max_position_embeddings, projection_size=c.projection_size,
        layer_norm_eps=c.layer_norm_eps, hidden_act="gelu_pytorch_tanh", attention_dropout=0.0,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
    )


def config_from_hf(d: dict) -> SiglipConfig:
    """HF SiglipConfig dict -> SiglipConfig. `contrastive_loss` is our key (absent on the hub,
    where every checkpoint is a sigmoid one); transformers keeps unknown keys, so it round-trips."""
    return SiglipConfig(
        vision=vision_config_from_hf(d.get("vision_config") or {}),
        text=text_config_from_hf(d.get("text_config") or {}),
        contrastive_loss=d.get("contrastive_loss", "sigmoid"),
    )


def config_to_hf(c: SiglipConfig) -> dict:
    return dict(
        architectures=["SiglipModel"], model_type="siglip", text_config=text_config_to_hf(c.text),
        vision_config=vision_config_to_hf(c.vision), contrastive_loss=c.contrastive_loss,
        initializer_factor=1.0,
    )
