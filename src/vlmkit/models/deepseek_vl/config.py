"""DeepSeek-VL config: a SigLIP vision tower, the aligner (a 2-layer GELU connector) and a decoder.

Presets (DeepSeek-VL, arXiv:2403.05525; HF deepseek-community/deepseek-vl-1.3b-chat):
- deepseek-vl-1.3b-chat: verified against an exact copy of the converted config.json and
  preprocessor_config.json (github hlky/dinoml_v2, agents/plans/transformers/deepseek_vl/_sources/
  deepseek-community__deepseek-vl-1.3b-chat__config.json, transformers 4.53.0.dev0): SigLIP-L/16
  at 384 px (width 1024, depth 24, 16 heads, MLP 4096, LayerNorm eps 1e-6, exact "gelu", no MAP
  head: vision_use_head false -> 24 x 24 = 576 image tokens), the aligner 1024 -> 2048 -> 2048,
  and the DeepSeek-LLM-1.3B decoder in Llama layout (width 2048, 24 layers, 16 heads / 16 KV heads
  of 128, MLP 5632, RMSNorm eps 1e-6, rope_theta 1e4, 16384 positions, vocabulary 102400;
  `<image_placeholder>` = 100015). The file has no tie_word_embeddings, so DeepseekVLConfig's
  default ties the head: transformers 5.24 builds it with 1,752,925,184 parameters, as this
  preset does. Fields fixed against it (were use_head=True, gelu_tanh, an untied head).
  Unverified: bos / eos 100000 / 100001 (tokenizer files, not config.json).
- debug: the SigLIP debug tower + the Llama debug decoder, runs on a CPU in milliseconds.
Hybrid (`DeepseekVLHybridConfig`):
- deepseek-vl-7b-chat (deepseek-community/deepseek-vl-7b-chat): verified against a field-by-field
  snapshot of its config.json (hlky/dinoml_v2, agents/plans/transformers/deepseek_vl_hybrid/
  _sources/config_snapshot.md): the SAM ViT-B high-resolution tower at 1024 px (width 768, MLP
  3072, 12 layers, 12 heads, windows of 14, global blocks 2/5/8/11, neck 256 channels, then
  downsampled to 512 and 1024), the same SigLIP-L/16-384 low-resolution tower (exact gelu, no
  head), the hybrid aligner to 4096 and the DeepSeek-LLM-7B decoder (30 layers, width 4096, MLP
  11008, 32 heads / 32 KV heads of 128, rope_theta 1e4, 16384 positions, vocabulary 102400).
  Fixed: 16384 positions (was 4096), no MAP head, exact gelu. Unverified: the untied head (the
  snapshot does not give tie_word_embeddings; if the file has none, transformers ties it).
- debug: SAM debug tower (64 px, 8 x 8 grid, windows of 3 with padding, one global block).
Not fixable here: `siglip/hf_mapping.py` writes every SigLIP tower as "gelu_pytorch_tanh" and
rejects "gelu" on reading, so these presets' config.json says tanh and the published files do
not load; `family.py` writes CLIP mean / std where the published preprocessor has 0.5 / 0.5.
"""

from dataclasses import dataclass, field, replace

from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.connectors import ConnectorConfig, HybridConnectorConfig
from vlmkit.models.parts.sam_vit import SamVisionConfig
from vlmkit.models.siglip.config import PRESETS as SIGLIP_PRESETS
from vlmkit.models.siglip.config import SiglipVisionConfig

DEEPSEEK_VL_IMAGE_TOKEN_ID = 100015


@dataclass(kw_only=True)
class DeepseekVLConfig:
    vision: SiglipVisionConfig
    text: DecoderConfig  # LlamaConfig for every published DeepSeek-VL
    # transformers' DeepseekVLAligner: linear1 -> exact GELU -> linear2, with biases.
    aligner: ConnectorConfig = field(default_factory=ConnectorConfig)
    # Id of `<image_placeholder>`; the processor repeats it num_image_tokens times per image.
    image_token_id: int = DEEPSEEK_VL_IMAGE_TOKEN_ID

    def __post_init__(self):
        if self.aligner.pixel_shuffle != 1 or self.aligner.norm or self.aligner.num_layers != 2:
            raise ValueError("the DeepSeek-VL aligner is two linears with an activation (no pixel shuffle, no norm)")

    @property
    def num_image_tokens(self) -> int:
        """Tokens each image contributes: every patch of the tower's last (post-LayerNormed) state."""
        return self.vision.num_patches

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DeepseekVLConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown DeepSeek-VL preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


# The converted checkpoints' vision_config: exact GELU ("gelu", timm's nn.GELU in the original
# siglip_vit.py), no MAP head (vision_use_head false: the head is not in the checkpoint).
_SIGLIP_L16_384 = SiglipVisionConfig(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                                     image_size=384, patch_size=16, use_head=False, hidden_act="gelu")
_DEEPSEEK_LLM_1_3B = LlamaConfig(
    vocab_size=102400, hidden_size=2048, intermediate_size=5632, num_layers=24, num_heads=16,
    num_kv_heads=16, head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=16384,
    tie_embeddings=True, bos_token_id=100000, eos_token_id=100001,
)

PRESETS: dict[str, DeepseekVLConfig] = {
    "deepseek-vl-1.3b-chat": DeepseekVLConfig(vision=_SIGLIP_L16_384, text=_DEEPSEEK_LLM_1_3B),
    "debug": DeepseekVLConfig(vision=replace(SIGLIP_PRESETS["debug"], use_head=True), text=LLAMA_PRESETS["debug"],
                              image_token_id=511),
}


# --- DeepSeek-VL hybrid (model_type "deepseek_vl_hybrid"): + a SAM-B high-resolution tower ----------


@dataclass(kw_only=True)
class DeepseekVLHybridConfig:
    """A SigLIP low-resolution tower, a SAM ViT high-resolution tower whose features are resampled
    to the SigLIP grid, the hybrid aligner (`HybridConnector`) and a decoder."""

    vision: SiglipVisionConfig
    high_res_vision: SamVisionConfig = field(default_factory=SamVisionConfig)
    text: DecoderConfig
    aligner: HybridConnectorConfig = field(default_factory=HybridConnectorConfig)
    image_token_id: int = DEEPSEEK_VL_IMAGE_TOKEN_ID

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image: the SigLIP grid, to which the SAM features are brought."""
        return self.vision.num_patches

    @property
    def high_res_features(self) -> int:
        """Channels of a high-resolution token: the SAM neck's, x4 after the two stride-2 convs."""
        return 4 * self.high_res_vision.output_channels


_DEEPSEEK_LLM_7B = LlamaConfig(
    vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_layers=30, num_heads=32, num_kv_heads=32,
    head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=16384, tie_embeddings=False,
    bos_token_id=100000, eos_token_id=100001,
)

HYBRID_PRESETS: dict[str, DeepseekVLHybridConfig] = {
    "deepseek-vl-7b-chat": DeepseekVLHybridConfig(vision=_SIGLIP_L16_384, high_res_vision=SamVisionConfig(),
                                                  text=_DEEPSEEK_LLM_7B),
    "debug": DeepseekVLHybridConfig(
        vision=replace(SIGLIP_PRESETS["debug"], use_head=True), text=LLAMA_PRESETS["debug"], image_token_id=511,
        high_res_vision=SamVisionConfig(hidden_size=32, output_channels=16, num_layers=2, num_heads=4, image_size=64,
                                        patch_size=8, mlp_dim=64, window_size=3, global_attn_indexes=(1,)),
    ),
}
