"""InternVL config: an InternViT tower, feature selection, the connector and a decoder config.

Presets:
- internvl3-1b-hf: OpenGVLab/InternVL3-1B-hf (InternVL3, arXiv:2504.10479), verified against an
  exact copy of its config.json (github hlky/dinoml_v2, agents/plans/transformers/internvl/
  _sources/OpenGVLab__InternVL3-1B-hf--config.json, transformers 4.52.0.dev0), which every shape
  below matches. Tower InternViT-300M (width 1024, depth 24, 16 heads, MLP 4096, 448 px tiles of
  14 px patches, LayerNorm eps 1e-6, layer scale 0.1, use_mean_pooling: no final norm, q/k/v
  biases, no QK norm); the last block's output (layer -1), class token dropped, pixel shuffle 2
  -> 256 tokens per tile; connector LayerNorm(4096) -> 4096 -> 896 -> GELU -> 896. Decoder
  Qwen2.5-0.5B's shape (896 wide, 24 layers, 14 heads / 2 KV heads, MLP 4864, RMSNorm eps 1e-6,
  rope_theta 1e6, 32768 positions, no sliding window) with InternVL's vocabulary of 151674
  (`<IMG_CONTEXT>` = 151667, bos 151643, eos 151645).
  Not represented: the file's text rope_scaling {"rope_type": "dynamic", "factor": 2.0} (dynamic
  NTK; it equals the default RoPE up to 32768 positions, but vlmkit's loader rejects the file).
  Unverified: the untied LM head. The file states no tie_word_embeddings; the original
  OpenGVLab/InternVL3-1B config says false and the hub lists 938M parameters (an untied head),
  but transformers 5.24 (and vlmkit's loader) read the -hf file as tied (802,293,120 parameters).
- debug: a 2-block tower on 32 px tiles (4 tokens per tile) + the Qwen2 debug decoder.
"""

from dataclasses import dataclass, field, replace

from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.intern_vit import InternVitConfig
from vlmkit.models.parts.vision import FeatureSelect

INTERNVL_IMAGE_TOKEN_ID = 151667  # <IMG_CONTEXT>


def _internvl_projector() -> ConnectorConfig:
    # InternVLMultiModalProjector: pixel shuffle by 1 / downsample_ratio, LayerNorm (eps 1e-5),
    # linear_1 -> GELU -> linear_2 with biases.
    return ConnectorConfig(pixel_shuffle=2, norm=True, layer_norm_eps=1e-5)


@dataclass(kw_only=True)
class InternVLConfig:
    vision: InternVitConfig
    text: DecoderConfig  # a Qwen2 LlamaConfig for every published InternVL 2.5 / 3 below 2B
    projector: ConnectorConfig = field(default_factory=_internvl_projector)
    # One layer (transformers indexes hidden_states with it, so no lists); -1 reads the tower's
    # `last_hidden_state` (final-normed when the tower has a final norm), any other index the
    # un-normed block output. "default" drops the class token, and must: pixel shuffle needs a
    # square grid of patches.
    features: FeatureSelect = field(default_factory=lambda: FeatureSelect(vision_feature_layer=-1))
    image_token_id: int = INTERNVL_IMAGE_TOKEN_ID

    def __post_init__(self):
        layer, n = self.features.vision_feature_layer, self.vision.num_layers + 1
        if not isinstance(layer, int):
            raise ValueError(f"InternVL reads one vision_feature_layer, got {list(layer)}")
        if not -n <= layer < n:
            raise ValueError(f"vision_feature_layer {layer} is out of range for a tower of {self.vision.num_layers} layers")
        if self.features.vision_feature_select_strategy != "default":
            raise ValueError("InternVL needs vision_feature_select_strategy 'default' (pixel shuffle "
                             "reads a square grid of patches, without the class token)")
        if self.vision.grid % self.projector.pixel_shuffle:
            raise ValueError(f"a {self.vision.grid}x{self.vision.grid} patch grid cannot be pixel-shuffled "
                             f"by {self.projector.pixel_shuffle}")

    @property
    def num_image_tokens(self) -> int:
        """Tokens each tile contributes: (image_size / patch_size / pixel_shuffle)^2."""
        return self.projector.num_tokens(self.vision.num_patches)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "InternVLConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown InternVL preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


_INTERNVIT_300M = InternVitConfig(
    hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, image_size=448, patch_size=14,
    qkv_bias=True,
)
_QWEN2_5_0_5B_INTERNVL = LlamaConfig(
    vocab_size=151674, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
    head_dim=64, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768, qkv_bias=True,
    tie_embeddings=False, bos_token_id=151643, eos_token_id=151645, hf_model_type="qwen2",
)

PRESETS: dict[str, InternVLConfig] = {
    "internvl3-1b-hf": InternVLConfig(vision=_INTERNVIT_300M, text=_QWEN2_5_0_5B_INTERNVL),
    "debug": InternVLConfig(
        vision=InternVitConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=32,
                               patch_size=8, qkv_bias=True),
        text=LLAMA_PRESETS["debug-qwen2"], image_token_id=511,
    ),
}
