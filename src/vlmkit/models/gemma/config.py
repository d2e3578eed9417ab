"""Gemma decoder config: Gemma 1 and Gemma 2 differ only in the typed fields below.

Presets follow the published checkpoints:
- gemma-2b: Gemma 1 2B (arXiv:2403.08295, HF google/gemma-2b), as used by PaliGemma 1 with the
  vocabulary extended to 257216 (1024 loc + 128 seg tokens, padded).
- gemma2-2b / gemma2-9b / gemma2-27b: Gemma 2 (arXiv:2408.00118, HF google/gemma-2-*), as used by
  PaliGemma 2 (arXiv:2412.03555), vocabulary 257216.
"""

from dataclasses import dataclass, field, replace
from typing import Literal

LayerType = Literal["full", "sliding"]


@dataclass(kw_only=True)
class GemmaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    # Multiply token embeddings by sqrt(hidden_size), rounded to the weights' dtype (Gemma).
    embed_scale: bool = True
    # Gemma 2: RMSNorm after attention and after the MLP as well as before ("sandwich").
    post_norms: bool = False
    # Gemma 2: softcap * tanh(x / softcap) on attention scores / on final logits; None = off.
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Attention scale is query_pre_attn_scalar ** -0.5; None means head_dim (Gemma 1).
    query_pre_attn_scalar: float | None = None
    # Gemma 2 local layers: sliding window size and the per-layer pattern; None = all full.
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] | None = None
    tie_embeddings: bool = True
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 1

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.layer_types is not None and len(self.layer_types) != self.num_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_window(self, i: int) -> int | None:
        """The sliding window of layer i, or None for a full-attention layer."""
        if self.layer_types is None or self.layer_types[i] == "full":
            return None
        return self.sliding_window

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GemmaConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown Gemma preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def gemma2_layer_types(num_layers: int) -> tuple[LayerType, ...]:
    """Gemma 2 alternates local (sliding) and global layers, starting with local."""
    return tuple("sliding" if i % 2 == 0 else "full" for i in range(num_layers))


_GEMMA2 = dict(
    post_norms=True,
    attn_logit_softcap=50.0,
    final_logit_softcap=30.0,
    sliding_window=4096,
)
PALIGEMMA_VOCAB = 257216

PRESETS: dict[str, GemmaConfig] = {
    "gemma-2b": GemmaConfig(
        vocab_size=PALIGEMMA_VOCAB, hidden_size=2048, intermediate_size=16384, num_layers=18,
        num_heads=8, num_kv_heads=1, head_dim=256,
    ),
    "gemma2-2b": GemmaConfig(
        vocab_size=PALIGEMMA_VOCAB, hidden_size=2304, intermediate_size=9216, num_layers=26,
        num_heads=8, num_kv_heads=4, head_dim=256, query_pre_attn_scalar=256,
        layer_types=gemma2_layer_types(26), **_GEMMA2,
    ),
    "gemma2-9b": GemmaConfig(
        vocab_size=PALIGEMMA_VOCAB, hidden_size=3584, intermediate_size=14336, num_layers=42,
        num_heads=16, num_kv_heads=8, head_dim=256, query_pre_attn_scalar=256,
        layer_types=gemma2_layer_types(42), **_GEMMA2,
    ),
    "gemma2-27b": GemmaConfig(
        vocab_size=PALIGEMMA_VOCAB, hidden_size=4608, intermediate_size=36864, num_layers=46,
        num_heads=32, num_kv_heads=16, head_dim=128, query_pre_attn_scalar=144,
        layer_types=gemma2_layer_types(46), **_GEMMA2,
    ),
    # Decoder of vlmkit's bundled vlmkit-shapes-tiny (recipes/shapes_tiny.py); the vocabulary is
    # replaced by that of the small tokenizer trained on the synthetic manifest (~1.5k ids).
    "shapes-tiny": GemmaConfig(
        vocab_size=2048, hidden_size=192, intermediate_size=768, num_layers=4,
        num_heads=4, num_kv_heads=1, head_dim=48,
    ),
    # Tiny configs that run on a CPU in milliseconds, for tests and smoke runs.
    "debug": GemmaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=1, head_dim=16,
    ),
    "debug-gemma2": GemmaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=16, query_pre_attn_scalar=24,
        layer_types=gemma2_layer_types(4), post_norms=True, attn_logit_softcap=50.0,
        final_logit_softcap=30.0, sliding_window=8,
    ),
}
