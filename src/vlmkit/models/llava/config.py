"""LLaVA config: a vision tower config, feature selection, a connector and a decoder config.

Presets follow the published checkpoints (LLaVA-1.5, arXiv:2310.03744; HF llava-hf/*):
- llava-1.5-7b-hf: CLIP ViT-L/14-336 (576 patches + class token; layer -2, class token dropped
  -> 576 image tokens), a 2-layer GELU MLP 1024 -> 4096 -> 4096 with biases, and the Vicuna-7B
  (Llama 2 7B shape) decoder: 32 layers, width 4096, MLP 11008, 32 heads, vocabulary 32064,
  `<image>` = 32000, pad 32001. Verified against transformers' llava/convert_llava_weights_to_hf.py
  (vocabulary 32000 + 2 padded to a multiple of 64, image token 32000, pad 32001, LlavaConfig's
  default CLIP-L/14-336 tower, layer -2, "default" selection, GELU projector). Unverified: the
  decoder fields, copied by that script from lmsys/vicuna-7b-v1.5's config.json (not found here).
  The vision side is a CLIP / SigLIP tower or the Pixtral-ViT (`PixtralVisionConfig`: images
  at their own sizes; its presets, pixtral-12b and pixtral-debug, are in models/pixtral/config.py).
  The text side is any registered decoder config (`LlamaConfig` here; a `GemmaConfig` works
  too): the decoder class comes from the text config's family record.
- debug: CLIP debug tower + Llama debug decoder, runs on a CPU in milliseconds.
"""

from dataclasses import dataclass, field, replace

from vlmkit.models.clip.config import PRESETS as CLIP_PRESETS
from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig
from vlmkit.models.parts.vision import FeatureSelect
from vlmkit.models.siglip.config import SiglipVisionConfig

LLAVA_IMAGE_TOKEN_ID = 32000


@dataclass(kw_only=True)
class LlavaConfig:
    # A ClipVisionConfig for every published LLaVA; the tower class comes from its family record.
    vision: SiglipVisionConfig | PixtralVisionConfig
    text: DecoderConfig  # LlamaConfig for every published LLaVA
    # LLaVA's projector: linear_1 -> GELU -> linear_2, with biases.
    projector: ConnectorConfig = field(default_factory=ConnectorConfig)
    features: FeatureSelect = field(default_factory=FeatureSelect)
    # Id of the `<image>` placeholder; the processor repeats it num_image_tokens times per image.
    image_token_id: int = LLAVA_IMAGE_TOKEN_ID

    def __post_init__(self):
        n = self.vision.num_layers + 1
        if any(not -n <= i < n for i in self.features.layers):
            raise ValueError(f"vision_feature_layer {self.features.vision_feature_layer} is out of range "
                             f"for a tower of {self.vision.num_layers} layers")

    @property
    def num_image_tokens(self) -> int:
        """Tokens each image contributes: (image_size / patch_size)^2 with the default strategy
        (Pixtral: the most an image gives, a full-size square one; the processor counts each image)."""
        return self.projector.num_tokens(self.features.num_tokens(self.vision.num_positions))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LlavaConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown LLaVA preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


_VICUNA_7B = LlamaConfig(
    vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
    num_kv_heads=32, head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=4096,
    tie_embeddings=False, pad_token_id=32001, bos_token_id=1, eos_token_id=2,
)

PRESETS: dict[str, LlavaConfig] = {
    "llava-1.5-7b-hf": LlavaConfig(vision=CLIP_PRESETS["clip-vit-large-patch14-336"], text=_VICUNA_7B),
    "debug": LlavaConfig(vision=CLIP_PRESETS["debug"], text=LLAMA_PRESETS["debug"], image_token_id=511),
}
