"""Qwen2-VL config: the native-resolution vision tower and the Qwen2 decoder with M-RoPE.

Presets follow the published checkpoint Qwen/Qwen2-VL-2B-Instruct (its config.json, as copied in
the public kmodels QWEN2_VL_MODEL_CONFIG table: the hub page itself was not reachable offline):
- qwen2-vl-2b-instruct: tower depth 32, width 1280, 16 heads, MLP ratio 4 (quick-GELU), 14-px
  patches, temporal patch 2, spatial merge 2 -> merger to 1536; decoder 28 layers, width 1536,
  MLP 8960, 12 query / 2 KV heads (head dim 128), RoPE theta 1e6, M-RoPE sections (16, 24, 24),
  tied head, vocabulary 151936; `<|image_pad|>` 151655, `<|vision_start|>` / `<|vision_end|>`
  151652 / 151653, `<|video_pad|>` 151656.
- debug: a 2-block tower and a 2-layer decoder, runs on a CPU in milliseconds.
"""

from dataclasses import dataclass, field, replace

from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.qwen2_vit import Qwen2VitConfig


@dataclass(kw_only=True)
class Qwen2VLConfig:
    vision: Qwen2VitConfig = field(default_factory=Qwen2VitConfig)
    text: LlamaConfig  # a Qwen2 decoder with `mrope_section` set
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    # Qwen2.5-VL's absolute-time M-RoPE: a video's temporal position advances by
    # tokens_per_second * second_per_grid_ts per temporal patch; None (Qwen2-VL): by 1.
    tokens_per_second: float | None = None

    def __post_init__(self):
        if self.text.mrope_section is None:
            raise ValueError("a Qwen2-VL decoder needs mrope_section (M-RoPE)")
        if self.vision.hidden_size != self.text.hidden_size:
            raise ValueError(f"the vision merger gives width {self.vision.hidden_size} but the decoder has "
                             f"{self.text.hidden_size}")


_QWEN2_VL_2B = Qwen2VLConfig(
    vision=Qwen2VitConfig(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4, patch_size=14,
                          temporal_patch_size=2, spatial_merge_size=2, hidden_size=1536),
    text=LlamaConfig(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                     num_kv_heads=2, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768,
                     qkv_bias=True, tie_embeddings=True, mrope_section=(16, 24, 24), bos_token_id=151643,
                     eos_token_id=151645, hf_model_type="qwen2"),
)
_DEBUG = Qwen2VLConfig(
    vision=Qwen2VitConfig(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, patch_size=14, temporal_patch_size=2,
                          spatial_merge_size=2, hidden_size=64),
    text=LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=16, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=4096,
                     qkv_bias=True, tie_embeddings=True, mrope_section=(2, 3, 3), bos_token_id=151643,
                     eos_token_id=151645, hf_model_type="qwen2"),
)
PRESETS: dict[str, Qwen2VLConfig] = {"qwen2-vl-2b-instruct": _QWEN2_VL_2B, "debug": _DEBUG}


def from_preset(name: str, **overrides) -> Qwen2VLConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown Qwen2-VL preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
