"""DeepSeek-VL <-> Hugging Face names and configs (transformers' DeepseekVLForConditionalGeneration).

The layout transformers 5 writes, which we write too: `model.vision_model.*` (a SiglipVisionModel,
MAP head included), `model.aligner.linear1/2.*`, `model.language_model.*` (a LlamaModel) and a
top-level `lm_head.*` (absent when tied, transformers' default). transformers 4.x nested the tower
once more (`model.vision_model.vision_model.*`); that is read as well. The hybrid adds the SAM tower
(`model.high_res_vision_model.vision_encoder.*`), its second neck, the projection convs, alpha, and
its own aligner names (`model.aligner.vision_proj / high_res_vision_proj / proj`).
"""

from dataclasses import replace

from vlmkit.models.common.mapping import Table
from vlmkit.models.deepseek_vl.config import DEEPSEEK_VL_IMAGE_TOKEN_ID, DeepseekVLConfig, DeepseekVLHybridConfig
from vlmkit.models.parts.sam_vit import SamVisionConfig
from vlmkit.models.registry import family_for_model_type, family_of
from vlmkit.models.siglip import hf_mapping as siglip_map

__all__ = ["config_from_hf", "config_to_hf", "hybrid_config_from_hf", "hybrid_config_to_hf", "hybrid_table",
           "normalise_key", "table"]

_ALIGNER: Table = [("aligner.linear_1", "model.aligner.linear1"), ("aligner.linear_2", "model.aligner.linear2")]
_OLD_VISION, _VISION = "model.vision_model.vision_model.", "model.vision_model."


def _text_name(theirs: str) -> str:
    """A causal-LM decoder name (`model.*`, `lm_head`) -> its place in DeepseekVLForConditionalGeneration."""
    return "model.language_model." + theirs.removeprefix("model.") if theirs.startswith("model.") else theirs


def table(cfg: DeepseekVLConfig | DeepseekVLHybridConfig) -> Table:
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


# --- DeepSeek-VL hybrid (transformers' DeepseekVLHybridForConditionalGeneration) -------------------

_SAM = "model.high_res_vision_model.vision_encoder."
_HYBRID: Table = [
    ("high_res_vision_tower.patch_embed", _SAM + "patch_embed.projection"),
    ("high_res_vision_tower.pos_embed", _SAM + "pos_embed"),
    ("high_res_vision_tower.layers.{}.mlp.fc1", _SAM + "layers.{}.mlp.lin1"),
    ("high_res_vision_tower.layers.{}.mlp.fc2", _SAM + "layers.{}.mlp.lin2"),
    ("high_res_vision_tower.layers", _SAM + "layers"),
    ("high_res_vision_tower.neck", _SAM + "neck"),
    ("high_res_neck", "model.high_res_vision_neck"),
    ("high_res_proj", "model.high_res_vision_proj"),
    ("high_res_alpha", "model.high_res_vision_alpha"),
    ("aligner", "model.aligner"),
]
# transformers' SamVisionConfig defaults (SAM-B, 1024 px), for fields a config.json leaves out.
_SAM_DEFAULTS = dict(hidden_size=768, output_channels=256, num_hidden_layers=12, num_attention_heads=12,
                     num_channels=3, image_size=1024, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6,
                     qkv_bias=True, mlp_ratio=4.0, use_abs_pos=True, use_rel_pos=True, window_size=14,
                     global_attn_indexes=(2, 5, 8, 11), mlp_dim=None)


def hybrid_table(cfg: DeepseekVLHybridConfig) -> Table:
    base = table(cfg)  # SigLIP tower, then the aligner (replaced below), then the decoder
    return [e for e in base if e not in _ALIGNER] + _HYBRID


def sam_config_from_hf(d: dict) -> SamVisionConfig:
    d = {**_SAM_DEFAULTS, **d}
    if not (d["use_abs_pos"] and d["use_rel_pos"]):
        raise ValueError("a SAM tower without absolute or relative positions is not supported")
    if d["hidden_act"] != "gelu":
        raise ValueError(f"unsupported SAM activation {d['hidden_act']!r}")
    return SamVisionConfig(
        hidden_size=d["hidden_size"], output_channels=d["output_channels"], num_layers=d["num_hidden_layers"],
        num_heads=d["num_attention_heads"], image_size=d["image_size"], patch_size=d["patch_size"],
        num_channels=d["num_channels"], mlp_dim=d["mlp_dim"] or int(d["hidden_size"] * d["mlp_ratio"]),
        window_size=d["window_size"], global_attn_indexes=tuple(d["global_attn_indexes"]),
        layer_norm_eps=d["layer_norm_eps"], qkv_bias=bool(d["qkv_bias"]),
    )


def sam_config_to_hf(c: SamVisionConfig) -> dict:
    return dict(
        model_type="sam_vision_model", hidden_size=c.hidden_size, output_channels=c.output_channels,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_channels=c.num_channels,
        image_size=c.image_size, patch_size=c.patch_size, hidden_act="gelu", layer_norm_eps=c.layer_norm_eps,
        qkv_bias=c.qkv_bias, mlp_dim=c.mlp_dim, use_abs_pos=True, use_rel_pos=True, window_size=c.window_size,
        global_attn_indexes=list(c.global_attn_indexes), attention_dropout=0.0,
    )


def hybrid_config_from_hf(d: dict) -> DeepseekVLHybridConfig:
    plain = config_from_hf(d)
    return DeepseekVLHybridConfig(vision=plain.vision, text=plain.text, image_token_id=plain.image_token_id,
                                  high_res_vision=sam_config_from_hf(d.get("high_res_vision_config") or {}))


def hybrid_config_to_hf(c: DeepseekVLHybridConfig) -> dict:
    plain = config_to_hf(DeepseekVLConfig(vision=c.vision, text=c.text, image_token_id=c.image_token_id))
    return {**plain, "architectures": ["DeepseekVLHybridForConditionalGeneration"], "model_type": "deepseek_vl_hybrid",
            "high_res_vision_config": sam_config_to_hf(c.high_res_vision)}
