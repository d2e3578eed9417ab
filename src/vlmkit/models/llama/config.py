"""Config of the Llama-layout decoders: Llama 2/3, Mistral and Qwen2 (one family, typed switches).

The three share transformers' LlamaForCausalLM key layout and differ only in fields of
`DecoderConfig`: Qwen2 has q/k/v biases and (from `max_window_layers` on, when enabled) sliding
windows; Mistral slides in every layer and allows head_dim != hidden_size / num_heads; Llama 3.x
uses "llama3" RoPE scaling. `hf_model_type` only says which transformers config a checkpoint is
read from / written as.

Presets follow the published checkpoints' config.json:
- llama-3.2-1b: meta-llama/Llama-3.2-1B (tied head, rope_theta 5e5, llama3 scaling x32).
- mistral-7b-v0.1: mistralai/Mistral-7B-v0.1 (sliding window 4096 in every layer).
- qwen2-0.5b: Qwen/Qwen2-0.5B (q/k/v bias, tied head, rope_theta 1e6; sliding window off).
- debug-*: tiny CPU configs exercising each switch, for tests and smoke runs.
"""

from dataclasses import dataclass
from typing import Literal

from vlmkit.models.common.decoder_config import DecoderConfig, pick_preset, sliding_from
from vlmkit.models.common.rope import RopeScaling

HFModelType = Literal["llama", "mistral", "qwen2"]


@dataclass(kw_only=True)
class LlamaConfig(DecoderConfig):
    """`DecoderConfig` (whose defaults are the Llama layout) plus the checkpoint flavour."""

    rms_norm_eps: float = 1e-5
    # Which transformers model_type config.json names; no effect on the computation.
    hf_model_type: HFModelType = "llama"

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LlamaConfig":
        return pick_preset(PRESETS, name, "Llama", **overrides)


_LLAMA3_2 = RopeScaling(kind="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                        original_max_position_embeddings=8192)

PRESETS: dict[str, LlamaConfig] = {
    "llama-3.2-1b": LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
        num_kv_heads=8, head_dim=64, rope_theta=500000.0, rope_scaling=_LLAMA3_2,
        max_position_embeddings=131072, tie_embeddings=True, bos_token_id=128000, eos_token_id=128001,
    ),
    "mistral-7b-v0.1": LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, max_position_embeddings=32768, sliding_window=4096,
        layer_types=sliding_from(32, 0), bos_token_id=1, eos_token_id=2, hf_model_type="mistral",
    ),
    "qwen2-0.5b": LlamaConfig(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=131072,
        qkv_bias=True, tie_embeddings=True, bos_token_id=151643, eos_token_id=151643, hf_model_type="qwen2",
    ),
    # Tiny configs that run on a CPU in milliseconds, for tests and smoke runs.
    "debug": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, bos_token_id=1, eos_token_id=2,
    ),
    "debug-llama3": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=500000.0, tie_embeddings=True, bos_token_id=1, eos_token_id=2,
        rope_scaling=RopeScaling(kind="llama3", factor=8.0, original_max_position_embeddings=64),
        max_position_embeddings=512,
    ),
    "debug-mistral": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=1, head_dim=24, sliding_window=8, layer_types=sliding_from(2, 0),
        bos_token_id=1, eos_token_id=2, hf_model_type="mistral",
    ),
    "debug-qwen2": LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, qkv_bias=True, tie_embeddings=True,
        sliding_window=8, layer_types=sliding_from(3, 1), bos_token_id=1, eos_token_id=2,
        hf_model_type="qwen2",
    ),
}
