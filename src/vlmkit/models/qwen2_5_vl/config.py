"""Qwen2.5-VL config: Qwen2-VL's composition with the windowed RMSNorm / SwiGLU tower and
absolute-time M-RoPE for videos (arXiv:2502.13923).

Presets follow the published checkpoints' config.json (4.x form; the hub was not reachable
offline, so the numbers were read from public copies of those files, and agree with the module
printout of the 7B model; transformers' own class defaults are not a checkpoint, e.g. its vision
`hidden_size` default is 3584):
- qwen2.5-vl-3b-instruct (Qwen/Qwen2.5-VL-3B-Instruct): tower depth 32, width 1280, 16 heads,
  SwiGLU width 3420 (silu, biases), RMSNorm, 14-px patches, temporal patch 2, merge 2, windows of
  112 px with full attention in blocks 7, 15, 23, 31, merger to 2048, tokens_per_second 2; decoder
  36 layers, width 2048, MLP 11008, 16 query / 2 KV heads (head dim 128), RoPE theta 1e6, M-RoPE
  sections (16, 24, 24), 128000 positions, tied head, vocabulary 151936.
- qwen2.5-vl-7b-instruct (Qwen/Qwen2.5-VL-7B-Instruct): the same tower with a merger to 3584;
  decoder 28 layers, width 3584, MLP 18944, 28 query / 4 KV heads, untied head, vocabulary 152064.
- debug: a 2-block tower (block 1 full attention, windows of 2 x 2 merged tokens) and a 2-layer
  decoder; runs on a CPU in milliseconds.
Token ids as Qwen2-VL's: `<|image_pad|>` 151655, `<|video_pad|>` 151656, `<|vision_start|>` /
`<|vision_end|>` 151652 / 151653.
"""

from dataclasses import dataclass

from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.qwen2_vit import Qwen2VitConfig
from vlmkit.models.qwen2_vl.config import Qwen2VLConfig


@dataclass(kw_only=True)
class Qwen2_5_VLConfig(Qwen2VLConfig):
    # Published value (transformers' class default is 4).
    tokens_per_second: int | None = 2


def _tower(out: int, **kw) -> Qwen2VitConfig:
    base = dict(embed_dim=1280, depth=32, num_heads=16, hidden_act="silu", intermediate_size=3420, patch_size=14,
                temporal_patch_size=2, spatial_merge_size=2, norm="rmsnorm", gated_mlp=True, window_size=112,
                fullatt_block_indexes=(7, 15, 23, 31))
    return Qwen2VitConfig(**{**base, **kw}, hidden_size=out)


def _decoder(**kw) -> LlamaConfig:
    base = dict(head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=128000, qkv_bias=True,
                mrope_section=(16, 24, 24), bos_token_id=151643, eos_token_id=151645, hf_model_type="qwen2")
    return LlamaConfig(**{**base, **kw})


_3B = Qwen2_5_VLConfig(vision=_tower(2048), text=_decoder(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
    tie_embeddings=True))
_7B = Qwen2_5_VLConfig(vision=_tower(3584), text=_decoder(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
    tie_embeddings=False))
_DEBUG = Qwen2_5_VLConfig(
    vision=_tower(64, embed_dim=32, depth=2, num_heads=4, intermediate_size=48, window_size=56,
                  fullatt_block_indexes=(1,)),
    text=_decoder(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16, max_position_embeddings=4096, mrope_section=(2, 3, 3), tie_embeddings=True))
PRESETS: dict[str, Qwen2_5_VLConfig] = {
    "qwen2.5-vl-3b-instruct": _3B, "qwen2.5-vl-7b-instruct": _7B, "debug": _DEBUG}

