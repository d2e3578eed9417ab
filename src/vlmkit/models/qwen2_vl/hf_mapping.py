"""Qwen2-VL <-> Hugging Face names and configs (transformers' Qwen2VLForConditionalGeneration).

On disk (`save_pretrained`, and the published Qwen/Qwen2-VL-* folders): `visual.*` (the tower,
whose module names are ours), `model.*` (the Qwen2 decoder without its head) and `lm_head`.
transformers 5's in-memory names (`model.visual.*`, `model.language_model.*`) are read as well.
config.json is read in the 5.x form (`text_config` with `rope_parameters.mrope_section`) or the
published 4.x form (text fields at the top level, `rope_scaling = {"type": "mrope", ...}`, the
tower's `in_chans` / `spatial_patch_size`); it is written in the 5.x form.
"""

from dataclasses import replace

from vlmkit.models.common.activations import TO_HF_ACTIVATION, activation_from_hf
from vlmkit.models.common.mapping import Table
from vlmkit.models.llama import hf_mapping as llama_map
from vlmkit.models.parts.qwen2_vit import Qwen2VitConfig
from vlmkit.models.qwen2_vl.config import Qwen2VLConfig

_VISION: Table = [(n, n) for n in ("visual.patch_embed", "visual.blocks", "visual.merger")]
_ALIASES = [("model.language_model.", "model."), ("model.visual.", "visual.")]
TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_VISION_DEFAULTS = dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4, hidden_act="quick_gelu", in_channels=3,
                        patch_size=14, temporal_patch_size=2, spatial_merge_size=2, hidden_size=3584)


def table(cfg: Qwen2VLConfig) -> Table:
    return _VISION + [(f"language_model.{o}", t) for o, t in llama_map.table(cfg.text)]


def normalise_key(key: str) -> str:
    for alias, canonical in _ALIASES:
        if key.startswith(alias):
            return canonical + key[len(alias):]
    return key


def _vision_from_hf(v: dict) -> Qwen2VitConfig:
    v = {**_VISION_DEFAULTS, **{k: x for k, x in v.items() if x is not None}}
    rope = v.get("rope_parameters") or {}
    return Qwen2VitConfig(
        embed_dim=v["embed_dim"], depth=v["depth"], num_heads=v["num_heads"], mlp_ratio=int(v["mlp_ratio"]),
        hidden_act=activation_from_hf(v["hidden_act"]), in_channels=v.get("in_chans", v["in_channels"]),
        patch_size=v.get("spatial_patch_size", v["patch_size"]), temporal_patch_size=v["temporal_patch_size"],
        spatial_merge_size=v["spatial_merge_size"], hidden_size=v["hidden_size"],
        rope_theta=float(rope.get("rope_theta", 10000.0)))


def text_from_hf(d: dict):
    """The decoder config from `text_config` (5.x) or the top level (4.x), M-RoPE sections included."""
    t = dict(d.get("text_config") or {k: x for k, x in d.items() if k not in ("vision_config", "model_type")})
    rope = dict(t.get("rope_parameters") or t.get("rope_scaling") or {})
    section = rope.get("mrope_section")
    if not section:
        raise ValueError("config.json has no mrope_section (Qwen2-VL's M-RoPE sections)")
    theta = rope.get("rope_theta") or t.get("rope_theta") or 1e6
    t.update(model_type="qwen2", rope_parameters=dict(rope_type="default", rope_theta=theta))
    t.pop("rope_scaling", None)
    text = llama_map.config_from_hf(t)
    tied = bool(d.get("tie_word_embeddings")) or text.tie_embeddings  # transformers ties if either says so
    return replace(text, mrope_section=tuple(section), tie_embeddings=tied)


def config_from_hf(d: dict) -> Qwen2VLConfig:
    ids = {k: d[k] for k in TOKEN_IDS if d.get(k) is not None}
    return Qwen2VLConfig(vision=_vision_from_hf(d.get("vision_config") or {}), text=text_from_hf(d), **ids)


def text_to_hf(text_cfg, model_type: str) -> dict:
    """The decoder's `text_config` (5.x form) with its M-RoPE sections."""
    text = llama_map.config_to_hf(replace(text_cfg, mrope_section=None))
    text.pop("architectures", None)
    text.update(model_type=model_type)
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": list(text_cfg.mrope_section)}
    return text


def config_to_hf(cfg: Qwen2VLConfig) -> dict:
    text = text_to_hf(cfg.text, "qwen2_vl_text")
    v = cfg.vision
    vision = dict(model_type="qwen2_vl_vision", embed_dim=v.embed_dim, depth=v.depth, num_heads=v.num_heads,
                  mlp_ratio=v.mlp_ratio, hidden_act=TO_HF_ACTIVATION[v.hidden_act], in_channels=v.in_channels,
                  patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                  spatial_merge_size=v.spatial_merge_size, hidden_size=v.hidden_size,
                  rope_parameters=dict(rope_type="axial", rope_theta=v.rope_theta))
    return dict(model_type="qwen2_vl", architectures=["Qwen2VLForConditionalGeneration"], text_config=text,
                vision_config=vision, tie_word_embeddings=cfg.text.tie_embeddings,
                **{k: getattr(cfg, k) for k in TOKEN_IDS})
