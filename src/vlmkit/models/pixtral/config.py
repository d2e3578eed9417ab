"""Pixtral presets: the Pixtral-ViT tower alone and the whole model as a LLaVA config.

Sources: the config.json of mistral-community/pixtral-12b (transformers format; read through the
copies tbmod/pixtral-12b and saujasv/pixtral-12b on the hub, which name it as their origin) and
Mistral's own mistralai/Pixtral-12B-2409 params.json, which agree. Verified (no discrepancy)
against an exact copy of that config.json (github hlky/dinoml_v2, agents/plans/transformers/
pixtral/_sources/mistral-community_pixtral-12b_config.json; the fields it omits take the class
defaults listed below) and transformers' convert_pixtral_weights_to_hf.py, whose MistralConfig
is this decoder:
- tower: width 1024, MLP 4096, 24 blocks, 16 heads (head dim 64), 16-px patches, images up to
  1024 px per side (64 x 64 patches), RoPE theta 1e4, SiLU gated FFN;
- connector: LLaVA's 2-layer GELU MLP with biases, 1024 -> 5120 -> 5120, reading the last
  block ("vision_feature_layer": -1) with every patch kept ("full");
- decoder: Mistral NeMo 12B: 40 layers, width 5120, MLP 14336, 32 heads of 128, 8 KV heads,
  vocabulary 131072 (Tekken), RoPE theta 1e9, 1,024,000 positions, no sliding window, untied;
- `[IMG]` = 10 (image_token_index), `[IMG_BREAK]` = 12, `[IMG_END]` = 13 (params.json /
  the Tekken tokenizer; placed by the processor, not the model).
- debug: a 2-block tower with 8-px patches on the Llama debug decoder, runs on a CPU in milliseconds.
"""

from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.llava.config import LlavaConfig
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig
from vlmkit.models.parts.vision import FeatureSelect

PIXTRAL_IMAGE_TOKEN_ID = 10

VISION_PRESETS: dict[str, PixtralVisionConfig] = {
    "pixtral-12b": PixtralVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, image_size=1024, patch_size=16,
        hidden_act="silu", rope_theta=10000.0,
    ),
    "debug": PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=64, patch_size=8,
    ),
}

_NEMO_12B = LlamaConfig(
    vocab_size=131072, hidden_size=5120, intermediate_size=14336, num_layers=40, num_heads=32, num_kv_heads=8,
    head_dim=128, rms_norm_eps=1e-5, rope_theta=1e9, max_position_embeddings=1024000, tie_embeddings=False,
    pad_token_id=11, bos_token_id=1, eos_token_id=2, hf_model_type="mistral",
)

# Pixtral reads the last block and keeps every patch: there is no class token to drop.
_FEATURES = FeatureSelect(vision_feature_layer=-1, vision_feature_select_strategy="full")

# Registered with the llava family (models/llava/family.py): these are LlavaConfigs.
PRESETS: dict[str, LlavaConfig] = {
    "pixtral-12b": LlavaConfig(vision=VISION_PRESETS["pixtral-12b"], text=_NEMO_12B, projector=ConnectorConfig(),
                               features=_FEATURES, image_token_id=PIXTRAL_IMAGE_TOKEN_ID),
    "pixtral-debug": LlavaConfig(vision=VISION_PRESETS["debug"], text=LLAMA_PRESETS["debug"], features=_FEATURES,
                                 image_token_id=PIXTRAL_IMAGE_TOKEN_ID),
}
