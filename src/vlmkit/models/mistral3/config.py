"""Mistral 3 config: a Pixtral-ViT tower, the patch merger, a 2-layer connector and a decoder config.

Presets (shapes as transformers' Mistral3ForConditionalGeneration reads them):
- mistral-small-3.1-24b-instruct-2503: mistralai/Mistral-Small-3.1-24B-Instruct-2503. Sources:
  transformers 5.24's Mistral3Config, whose sub-config defaults are documented as that checkpoint's
  (`@auto_docstring(checkpoint="mistralai/Mistral-Small-3.1-24B-Instruct-2503")`), and a
  config.json of the same architecture saved by transformers 4.57.1 and embedded in the public
  FLUX.2 text-encoder loader (a Mistral Small 3.x 24B checkpoint), which agree on every shape; the
  vision `hidden_act` is "silu" in the saved config.json (Pixtral's gated FFN; the class default
  "gelu" is not what the checkpoint uses):
  - tower: Pixtral-ViT width 1024, MLP 4096, 24 blocks, 16 heads of 64, 14-px patches, images up
    to 1540 px per side (110 x 110 patches), RoPE theta 1e4, SiLU gated FFN, last block read;
  - projector: RMSNorm (eps 1e-5, the text config's) -> 2 x 2 patch merger (4096 -> 1024, no
    bias) -> linear 1024 -> 5120 -> GELU -> linear 5120 -> 5120, no biases;
  - decoder: Mistral Small 24B: 40 layers, width 5120, MLP 32768, 32 heads of 128, 8 KV heads,
    vocabulary 131072 (Tekken), RoPE theta 1e9, 131072 positions, no sliding window, untied head;
  - `[IMG]` = 10 (image_token_index), as in Pixtral.
  Verified field by field (tests/unit/test_presets_published.py), no discrepancy; the processor
  (patch 14, longest_edge 1540, CLIP mean / std, bicubic) against mistral-small-3.1's
  preprocessor_config.json (github hlky/dinoml_v2, agents/plans/transformers/mistral3/).
  Unverified: that the FLUX.2 copy is 3.1-2503's own file rather than another 3.x release.
- debug: the Pixtral debug tower (8-px patches) with 2 x 2 merging on the Llama debug decoder.
Presets are looked up through the registry: `get_family("mistral3").preset(name)`.
"""

from dataclasses import dataclass, field

from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.parts.connectors import ConnectorConfig
from vlmkit.models.parts.patch_merger import PatchMergerConfig
from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig
from vlmkit.models.pixtral.config import PIXTRAL_IMAGE_TOKEN_ID
from vlmkit.models.pixtral.config import VISION_PRESETS as PIXTRAL_VISION_PRESETS


@dataclass(kw_only=True)
class Mistral3Config:
    vision: PixtralVisionConfig
    text: DecoderConfig  # LlamaConfig(hf_model_type="mistral") for the published checkpoints
    merger: PatchMergerConfig = field(default_factory=PatchMergerConfig)
    # linear_1 -> GELU -> linear_2 after the merger; `multimodal_projector_bias` (False by default).
    projector: ConnectorConfig = field(default_factory=lambda: ConnectorConfig(bias=False))
    # transformers' hidden_states index of the tower that is read (-1: the last block). One layer
    # only: transformers' projector norms a single layer's width, so a list of several cannot run.
    vision_feature_layer: int = field(default=-1, metadata={"signed": True})
    image_token_id: int = PIXTRAL_IMAGE_TOKEN_ID

    def __post_init__(self):
        n = self.vision.num_layers + 1
        if not -n <= self.vision_feature_layer < n:
            raise ValueError(f"vision_feature_layer {self.vision_feature_layer} is out of range for a tower of "
                             f"{self.vision.num_layers} layers")
        if self.projector.pixel_shuffle != 1 or self.projector.norm or self.projector.num_layers != 2:
            raise ValueError("Mistral 3's projector is two linears after the merger (no pixel shuffle, no LayerNorm)")
        if self.vision.max_patches_per_side < self.merger.spatial_merge_size:
            raise ValueError(f"spatial_merge_size {self.merger.spatial_merge_size} exceeds the tower's "
                             f"{self.vision.max_patches_per_side} patches per side")

    @property
    def num_image_tokens(self) -> int:
        """`[IMG]` tokens of the largest image (a full-size square one); each image gives its own count."""
        side = self.vision.max_patches_per_side
        return self.merger.num_tokens((side, side))


_SMALL_3_1_VISION = PixtralVisionConfig(
    hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, image_size=1540, patch_size=14,
    hidden_act="silu", rope_theta=10000.0,
)

_SMALL_24B = LlamaConfig(
    vocab_size=131072, hidden_size=5120, intermediate_size=32768, num_layers=40, num_heads=32, num_kv_heads=8,
    head_dim=128, rms_norm_eps=1e-5, rope_theta=1e9, max_position_embeddings=131072, tie_embeddings=False,
    pad_token_id=11, bos_token_id=1, eos_token_id=2, hf_model_type="mistral",
)

PRESETS: dict[str, Mistral3Config] = {
    "mistral-small-3.1-24b-instruct-2503": Mistral3Config(
        vision=_SMALL_3_1_VISION, text=_SMALL_24B, merger=PatchMergerConfig(spatial_merge_size=2, norm_eps=1e-5)),
    "debug": Mistral3Config(vision=PIXTRAL_VISION_PRESETS["debug"], text=LLAMA_PRESETS["debug"],
                            merger=PatchMergerConfig(norm_eps=LLAMA_PRESETS["debug"].rms_norm_eps)),
}
