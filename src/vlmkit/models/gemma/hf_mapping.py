"""Gemma <-> Hugging Face names and configs (GemmaForCausalLM / Gemma2ForCausalLM layout).

Our block names say what a norm does; HF's `post_attention_layernorm` is the pre-MLP norm in
Gemma 1 but the post-attention norm in Gemma 2, so the table depends on `post_norms`.
"""

from vlmkit.models.gemma.config import GemmaConfig, gemma2_layer_types
from vlmkit.errors import ConfigError
from vlmkit.models.common.mapping import Table

_COMMON: Table = [
    ("embed_tokens", "model.embed_tokens"),
    ("layers.{}.attn_norm", "model.layers.{}.input_layernorm"),
    ("layers.{}.self_attn", "model.layers.{}.self_attn"),
    ("layers.{}.mlp", "model.layers.{}.mlp"),
    ("norm", "model.norm"),
    ("lm_head", "lm_head"),
]
_GEMMA1: Table = [("layers.{}.mlp_norm", "model.layers.{}.post_attention_layernorm")]
_GEMMA2: Table = [
    ("layers.{}.post_attn_norm", "model.layers.{}.post_attention_layernorm"),
    ("layers.{}.mlp_norm", "model.layers.{}.pre_feedforward_layernorm"),
    ("layers.{}.post_mlp_norm", "model.layers.{}.post_feedforward_layernorm"),
]


def table(cfg: GemmaConfig) -> Table:
    return (_GEMMA2 if cfg.post_norms else _GEMMA1) + _COMMON


# transformers' defaults per model_type, for fields a config.json leaves out.
_HF_DEFAULTS = {
    "gemma": dict(
        vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=16, head_dim=256, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    ),
    "gemma2": dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=8192, tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=2, eos_token_id=1, query_pre_attn_scalar=256,
        sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
    ),
}


def config_from_hf(d: dict) -> GemmaConfig:
    """HF Gemma/Gemma2 config dict -> GemmaConfig."""
    kind = d.get("model_type", "gemma")
    if kind not in _HF_DEFAULTS:
        raise ValueError(f"unsupported text model_type {kind!r} (expected gemma or gemma2)")
    d = {**_HF_DEFAULTS[kind], **{k: v for k, v in d.items() if v is not None or k.endswith("softcapping")}}
    if "rope_parameters" in d and d["rope_parameters"]:
        d["rope_theta"] = d["rope_parameters"].get("rope_theta", d["rope_theta"])
    kw = dict(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
        num_kv_heads=d["num_key_value_heads"], head_dim=d["head_dim"], rms_norm_eps=d["rms_norm_eps"],
        rope_theta=float(d["rope_theta"]), max_position_embeddings=d["max_position_embeddings"],
        tie_embeddings=bool(d["tie_word_embeddings"]), pad_token_id=d["pad_token_id"],
        bos_token_id=d["bos_token_id"], eos_token_id=_first(d["eos_token_id"]),
    )
    if kind == "gemma2":
        n = kw["num_layers"]
        types = d.get("layer_types") or None
        kw.update(
            post_norms=True, query_pre_attn_scalar=d["query_pre_attn_scalar"],
            sliding_window=d["sliding_window"], final_logit_softcap=d["final_logit_softcapping"],
            attn_logit_softcap=d["attn_logit_softcapping"],
            layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in types)
            if types else gemma2_layer_types(n),
        )
    return GemmaConfig(**kw)


def _first(x):
    return x[0] if isinstance(x, list) else x


def config_to_hf(c: GemmaConfig) -> dict:
    gemma2_only = c.attn_logit_softcap or c.final_logit_softcap or c.sliding_window or c.query_pre_attn_scalar
    if not c.post_norms and gemma2_only:
        raise ConfigError("a Gemma config with Gemma 2 features but no post_norms has no HF equivalent")
    not_gemma = (not (c.norm_unit_offset and c.norm_scale_in_fp32 and c.embed_scale) or c.mlp_activation != "gelu_tanh"
                 or c.qkv_bias or c.o_bias or c.mlp_bias or c.rope_scaling)
    if not_gemma:
        raise ConfigError("a Gemma config with Llama-style switches (norm, embed scale, activation, biases, "
                          "rope scaling) has no HF Gemma equivalent")
    d = dict(
        model_type="gemma2" if c.post_norms else "gemma", vocab_size=c.vocab_size,
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_embeddings, pad_token_id=c.pad_token_id,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        hidden_activation="gelu_pytorch_tanh", hidden_act="gelu_pytorch_tanh",
    )
    if c.post_norms:
        d.update(
            query_pre_attn_scalar=c.query_pre_attn_scalar or c.head_dim, sliding_window=c.sliding_window,
            final_logit_softcapping=c.final_logit_softcap, attn_logit_softcapping=c.attn_logit_softcap,
            layer_types=[f"{t}_attention" for t in (c.layer_types or ["full"] * c.num_layers)],
        )
    return d
