"""The config of the shared pre-norm decoder (`vlmkit.models.common.decoder.Decoder`).

Gemma 1/2, Llama 2/3, Mistral and Qwen2 are one architecture (token embedding, N pre-norm blocks
of grouped-query self-attention with RoPE and a gated MLP, final RMSNorm, LM head); where they
differ is a typed field here, never a name check. The defaults are the plain Llama layout;
`GemmaConfig` and `LlamaConfig` are subclasses that set their family's defaults and presets.

Per-layer attention is `layer_types` ("full" / "sliding", with one `sliding_window`):
Mistral slides in every layer, Qwen2 from `max_window_layers` on, Gemma 2 alternates.
"""

from dataclasses import dataclass, replace
from typing import Literal, TypeVar

from vlmkit.models.common.mlp import Activation
from vlmkit.models.common.rope import RopeScaling

LayerType = Literal["full", "sliding"]
C = TypeVar("C", bound="DecoderConfig")


@dataclass(kw_only=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    # Grouped-query attention: query head h reads key/value head h // (num_heads // num_kv_heads).
    num_kv_heads: int
    # Explicit: Mistral and Gemma allow head_dim != hidden_size // num_heads.
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Long-context frequency scaling (linear / llama3 / yarn); None = plain RoPE.
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    # M-RoPE (Qwen2-VL): positions are [3, B, T] (temporal, height, width) and the hd/2
    # frequencies split into these three consecutive sections; None = 1-D positions [B, T].
    mrope_section: tuple[int, int, int] | None = None
    # RMSNorm scales by (1 + w) (Gemma) instead of w (Llama).
    norm_unit_offset: bool = False
    # RMSNorm multiplies by its scale in float32 and then casts (Gemma) instead of casting the
    # normalised activations and multiplying in the weight dtype (Llama); matters in bf16 only.
    norm_scale_in_fp32: bool = False
    # Multiply token embeddings by sqrt(hidden_size), rounded to the weights' dtype (Gemma).
    embed_scale: bool = False
    # Gated-MLP activation: "silu" (SwiGLU: Llama, Mistral, Qwen2) or "gelu_tanh" (GeGLU: Gemma).
    mlp_activation: Activation = "silu"
    # Biases on the q/k/v projections (Qwen2), on the output projection, on the MLP projections.
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # Gemma 2: RMSNorm after attention and after the MLP as well as before ("sandwich").
    post_norms: bool = False
    # Gemma 2: softcap * tanh(x / softcap) on attention scores / on final logits; None = off.
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Attention scale is query_pre_attn_scalar ** -0.5; None means head_dim.
    query_pre_attn_scalar: float | None = None
    # Sliding-window size of the "sliding" entries of layer_types; layer_types None = all full.
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] | None = None
    # LM head shares the token-embedding matrix.
    tie_embeddings: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.layer_types is not None:
            self.layer_types = tuple(self.layer_types)
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ValueError("layer_types has sliding layers but sliding_window is not set")
        if self.mrope_section is not None:
            self.mrope_section = tuple(self.mrope_section)
            if len(self.mrope_section) != 3 or sum(self.mrope_section) != self.head_dim // 2:
                raise ValueError(f"mrope_section={self.mrope_section} must be 3 sections summing to "
                                 f"head_dim / 2 = {self.head_dim // 2}")
        if self.mlp_activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"mlp_activation={self.mlp_activation!r}: choose silu or gelu_tanh")

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer i, or None for a full-attention layer."""
        if self.layer_types is None or self.layer_types[i] == "full":
            return None
        return self.sliding_window


def pick_preset(presets: dict[str, C], name: str, family: str, **overrides) -> C:
    """A copy of presets[name] with `overrides` applied; KeyError listing the choices otherwise."""
    if name not in presets:
        raise KeyError(f"unknown {family} preset {name!r}; choose from {sorted(presets)}")
    return replace(presets[name], **overrides)


def alternating_layer_types(num_layers: int) -> tuple[LayerType, ...]:
    """Gemma 2 alternates local (sliding) and global layers, starting with local."""
    return tuple("sliding" if i % 2 == 0 else "full" for i in range(num_layers))


def sliding_from(num_layers: int, first_sliding: int) -> tuple[LayerType, ...]:
    """Layers first_sliding.. slide, the ones before attend fully (Qwen2's max_window_layers;
    first_sliding=0 is Mistral's every-layer window)."""
    return tuple("sliding" if i >= first_sliding else "full" for i in range(num_layers))
