"""Gemma decoder config: the shared `DecoderConfig` with Gemma's defaults; Gemma 1 and Gemma 2
differ only in its typed fields (post_norms, softcaps, query_pre_attn_scalar, layer_types).

Presets follow the published checkpoints:
- gemma-2b: Gemma 1 2B (arXiv:2403.08295, HF google/gemma-2b), as used by PaliGemma 1 with the
  vocabulary extended to 257216 (1024 loc + 128 seg tokens, padded).
- gemma2-2b / gemma2-9b / gemma2-27b: Gemma 2 (arXiv:2408.00118, HF google/gemma-2-*), as used by
  PaliGemma 2 (arXiv:2412.03555), vocabulary 257216.
"""

from dataclasses import dataclass

from vlmkit.models.common.decoder_config import (
    DecoderConfig,
    LayerType,
    alternating_layer_types,
    pick_preset,
)
from vlmkit.models.common.mlp import Activation

__all__ = ["GemmaConfig", "LayerType", "PRESETS", "gemma2_layer_types"]


@dataclass(kw_only=True)
class GemmaConfig(DecoderConfig):
    """`DecoderConfig` with Gemma's defaults: (1 + w) RMSNorm scaled in float32, sqrt(D) embedding
    scale, GeGLU (tanh GELU) MLP, tied LM head, Gemma's special-token ids."""

    norm_unit_offset: bool = True
    norm_scale_in_fp32: bool = True
    embed_scale: bool = True
    mlp_activation: Activation = "gelu_tanh"
    tie_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 1

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GemmaConfig":
        return pick_preset(PRESETS, name, "Gemma", **overrides)


# Gemma 2 alternates local (sliding) and global layers, starting with local.
gemma2_layer_types = alternating_layer_types


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
