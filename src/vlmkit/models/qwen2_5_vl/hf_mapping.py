"""Qwen2.5-VL <-> Hugging Face names and configs (transformers' Qwen2_5_VLForConditionalGeneration).

The weight layout is Qwen2-VL's (`visual.*`, `model.*`, `lm_head`; transformers 5's in-memory
`model.visual.*` / `model.language_model.*` read too), so the table and key aliases are Qwen2-VL's;
only the tower's config differs. Its names are transformers' Qwen2_5_VLVisionConfig: `hidden_size`
is the tower width (ours `embed_dim`), `out_hidden_size` the merger's output (ours `hidden_size`),
`intermediate_size` the SwiGLU width, and `tokens_per_second` (the decoder's video time scale) sits
in `vision_config`. config.json is read in the 5.x form or the published 4.x form (text fields at
the top level, `rope_scaling` of type mrope, `in_chans` / `spatial_patch_size`); written as 5.x.
"""

from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.parts.qwen2_vit import Qwen2VitConfig
from vlmkit.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from vlmkit.models.qwen2_vl.hf_mapping import TOKEN_IDS, normalise_key, table, text_from_hf, text_to_hf

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table"]

# Qwen2_5_VLVisionConfig's class defaults, except the published tokens_per_second (2, not 4).
_VISION_DEFAULTS = dict(depth=32, hidden_size=3584, hidden_act="silu", intermediate_size=3420, num_heads=16,
                        in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, tokens_per_second=2,
                        window_size=112, out_hidden_size=3584, fullatt_block_indexes=(7, 15, 23, 31))


def _vision_from_hf(v: dict) -> tuple[Qwen2VitConfig, int]:
    v = {**_VISION_DEFAULTS, **{k: x for k, x in v.items() if x is not None}}
    rope = v.get("rope_parameters") or {}
    tower = Qwen2VitConfig(
        embed_dim=v["hidden_size"], depth=v["depth"], num_heads=v["num_heads"],
        hidden_act=activation_from_hf(v["hidden_act"]), intermediate_size=v["intermediate_size"],
        in_channels=v.get("in_chans", v["in_channels"]), patch_size=v.get("spatial_patch_size", v["patch_size"]),
        temporal_patch_size=v["temporal_patch_size"], spatial_merge_size=v["spatial_merge_size"],
        hidden_size=v["out_hidden_size"], rope_theta=float(rope.get("rope_theta", 10000.0)), norm="rmsnorm",
        gated_mlp=True, window_size=v["window_size"], fullatt_block_indexes=tuple(v["fullatt_block_indexes"]))
    return tower, int(v["tokens_per_second"])


def config_from_hf(d: dict) -> Qwen2_5_VLConfig:
    ids = {k: d[k] for k in TOKEN_IDS if d.get(k) is not None}
    vision, tokens_per_second = _vision_from_hf(d.get("vision_config") or {})
    return Qwen2_5_VLConfig(vision=vision, text=text_from_hf(d), tokens_per_second=tokens_per_second, **ids)


def config_to_hf(cfg: Qwen2_5_VLConfig) -> dict:
    v = cfg.vision
    if not (v.gated_mlp and v.norm == "rmsnorm" and v.intermediate_size):
        raise ValueError("a Qwen2.5-VL tower has RMSNorm, a gated MLP and an intermediate_size")
    vision = dict(model_type="qwen2_5_vl_vision", depth=v.depth, hidden_size=v.embed_dim,
                  hidden_act=TO_HF_ACTIVATION[v.hidden_act], intermediate_size=v.intermediate_size,
                  num_heads=v.num_heads, in_channels=v.in_channels, patch_size=v.patch_size,
                  spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size,
                  tokens_per_second=cfg.tokens_per_second, window_size=v.window_size, out_hidden_size=v.hidden_size,
                  fullatt_block_indexes=list(v.fullatt_block_indexes),
                  rope_parameters=dict(rope_type="axial", rope_theta=v.rope_theta))
    return dict(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"],
                text_config=text_to_hf(cfg.text, "qwen2_5_vl_text"), vision_config=vision,
                tie_word_embeddings=cfg.text.tie_embeddings, **{k: getattr(cfg, k) for k in TOKEN_IDS})
