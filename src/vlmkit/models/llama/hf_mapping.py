"""Llama / Mistral / Qwen2 <-> Hugging Face names and configs (LlamaForCausalLM,
MistralForCausalLM, Qwen2ForCausalLM: one key layout).

GemmaForCausalLM (Gemma 1) was derived from Llama's and uses the same names, so the key table is
Gemma 1's; biases (Qwen2's q/k/v) ride on the module patterns. What differs between the three
is only in config.json, which is read from either the 5.x form (`rope_parameters`) or the 4.x
form (`rope_theta` + `rope_scaling`) and written in the 5.x form.
"""

from vlmkit.errors import ConfigError
from vlmkit.models.common.decoder_config import sliding_from
from vlmkit.models.common.rope import RopeScaling
from vlmkit.models.gemma import hf_mapping as gemma_map
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.common.mapping import Table


def table(cfg: LlamaConfig) -> Table:
    return gemma_map.table(cfg)


# transformers' defaults per model_type, for fields a config.json leaves out.
_COMMON_DEFAULTS = dict(
    vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, hidden_act="silu",
    rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2,
)
_HF_DEFAULTS = {
    "llama": dict(_COMMON_DEFAULTS, intermediate_size=11008, max_position_embeddings=2048),
    "mistral": dict(_COMMON_DEFAULTS, intermediate_size=14336, max_position_embeddings=131072,
                    num_key_value_heads=8, sliding_window=4096),
    "qwen2": dict(_COMMON_DEFAULTS, vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                  num_key_value_heads=32, bos_token_id=None, eos_token_id=None, use_sliding_window=False,
                  sliding_window=4096, max_window_layers=28),
}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}


def _rope_from_hf(d: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) from `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x)."""
    p = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = float(p.get("rope_theta") or d.get("rope_theta") or 10000.0)
    kind = p.get("rope_type", p.get("type", "default"))
    # transformers fills original_max_position_embeddings from max_position_embeddings if absent.
    original = int(p.get("original_max_position_embeddings") or d["max_position_embeddings"])
    if kind == "default":
        return theta, None
    if kind in ("linear", "dynamic"):
        return theta, RopeScaling(kind=kind, factor=float(p["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            kind="llama3", factor=float(p["factor"]), original_max_position_embeddings=original,
            low_freq_factor=float(p["low_freq_factor"]), high_freq_factor=float(p["high_freq_factor"]),
        )
    if kind == "yarn":
        return theta, RopeScaling(
            kind="yarn", factor=float(p.get("factor") or d["max_position_embeddings"] / original),
            original_max_position_embeddings=original, beta_fast=float(p.get("beta_fast") or 32),
            beta_slow=float(p.get("beta_slow") or 1), truncate=bool(p.get("truncate", True)),
            attention_factor=p.get("attention_factor"), mscale=p.get("mscale"), mscale_all_dim=p.get("mscale_all_dim"),
        )
    raise ValueError(f"rope_type {kind!r} is not supported (default, linear, llama3, yarn, dynamic)")


def _layer_types_from_hf(kind: str, d: dict, n: int) -> tuple[int | None, tuple | None]:
    """(sliding_window, layer_types): Mistral slides everywhere, Qwen2 per layer, Llama nowhere."""
    window = d.get("sliding_window") if kind != "llama" else None
    if kind == "qwen2" and not d.get("use_sliding_window"):
        window = None
    if window is None:
        return None, None
    if kind == "mistral":
        return window, sliding_from(n, 0)
    if d.get("layer_types"):
        return window, tuple("sliding" if t == "sliding_attention" else "full" for t in d["layer_types"])
    return window, sliding_from(n, d["max_window_layers"])


def config_from_hf(d: dict) -> LlamaConfig:
    """HF Llama / Mistral / Qwen2 config dict -> LlamaConfig."""
    kind = d.get("model_type", "llama")
    if kind not in _HF_DEFAULTS:
        raise ValueError(f"unsupported text model_type {kind!r} (expected one of {sorted(_HF_DEFAULTS)})")
    d = {**_HF_DEFAULTS[kind], **d}
    if d["hidden_act"] not in _ACTIVATIONS:
        raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported (expected one of {sorted(_ACTIVATIONS)})")
    heads, n = d["num_attention_heads"], d["num_hidden_layers"]
    theta, scaling = _rope_from_hf(d)
    window, layer_types = _layer_types_from_hf(kind, d, n)
    attention_bias = bool(d.get("attention_bias", False))
    return LlamaConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=n, num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads, rms_norm_eps=d["rms_norm_eps"],
        rope_theta=theta, rope_scaling=scaling, max_position_embeddings=d["max_position_embeddings"],
        mlp_activation=_ACTIVATIONS[d["hidden_act"]], qkv_bias=kind == "qwen2" or attention_bias,
        o_bias=attention_bias, mlp_bias=bool(d.get("mlp_bias", False)), sliding_window=window,
        layer_types=layer_types, tie_embeddings=bool(d["tie_word_embeddings"]), pad_token_id=d["pad_token_id"],
        bos_token_id=d["bos_token_id"], eos_token_id=_first(d["eos_token_id"]), hf_model_type=kind,
    )


def _first(x):
    # A list of EOS ids (Llama 3 instruct) keeps its first; generation takes extra stop ids apart.
    return x[0] if isinstance(x, list) else x


def _check_expressible(c: LlamaConfig) -> None:
    """ConfigError if `c` uses a switch that its `hf_model_type` cannot express."""
    kind = c.hf_model_type
    gemma_only = (c.norm_unit_offset or c.norm_scale_in_fp32 or c.embed_scale or c.post_norms
                  or c.attn_logit_softcap or c.final_logit_softcap or c.query_pre_attn_scalar)
    sliding = [t == "sliding" for t in (c.layer_types or ())]
    problems = {
        "Gemma-only switches (norm offset / fp32 scale, embed scale, post norms, softcaps)": gemma_only,
        "q/k/v and output biases that differ": kind == "llama" and c.qkv_bias != c.o_bias,
        "sliding-window layers": kind == "llama" and any(sliding),
        "biases": kind == "mistral" and (c.qkv_bias or c.o_bias or c.mlp_bias),
        "sliding windows in some layers only": kind == "mistral" and any(sliding) and not all(sliding),
        "other biases than q/k/v": kind == "qwen2" and (not c.qkv_bias or c.o_bias or c.mlp_bias),
    }
    for what, bad in problems.items():
        if bad:
            raise ConfigError(f"a {kind} config with {what} has no transformers equivalent")


def _rope_to_hf(c: LlamaConfig) -> dict:
    s = c.rope_scaling
    if s is None:
        return dict(rope_type="default", rope_theta=c.rope_theta)
    d = dict(rope_type=s.kind, rope_theta=c.rope_theta, factor=s.factor)
    if s.kind == "llama3":
        d.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor)
    if s.kind == "yarn":
        d.update(beta_fast=s.beta_fast, beta_slow=s.beta_slow, truncate=s.truncate)
        d.update({k: v for k, v in dict(attention_factor=s.attention_factor, mscale=s.mscale,
                                        mscale_all_dim=s.mscale_all_dim).items() if v is not None})
    if s.kind not in ("linear", "dynamic"):
        d.update(original_max_position_embeddings=s.original_max_position_embeddings)
    return d


def config_to_hf(c: LlamaConfig) -> dict:
    _check_expressible(c)
    kind = c.hf_model_type
    sliding = [t == "sliding" for t in (c.layer_types or ())]
    d = dict(
        model_type=kind, architectures=[_ARCHITECTURES[kind]], vocab_size=c.vocab_size,
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
        hidden_act={v: k for k, v in _ACTIVATIONS.items()}[c.mlp_activation], rms_norm_eps=c.rms_norm_eps,
        rope_parameters=_rope_to_hf(c), max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_embeddings, pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
    )
    if kind == "llama":
        d.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    elif kind == "mistral":
        d.update(sliding_window=c.sliding_window if any(sliding) else None)
    else:
        d.update(
            use_sliding_window=any(sliding), sliding_window=c.sliding_window if any(sliding) else None,
            max_window_layers=sliding.index(True) if any(sliding) else c.num_layers,
            layer_types=[f"{'sliding' if s else 'full'}_attention" for s in sliding or [False] * c.num_layers],
        )
    return d
