"""LLaVA-NeXT config: LLaVA's (tower, feature selection, connector, decoder) plus the anyres grid.

Presets follow the published checkpoints:
- llava-v1.6-mistral-7b-hf: llava-hf/llava-v1.6-mistral-7b-hf's config.json (as reproduced in
  NVIDIA TensorRT-LLM's `test_modeling_llava_next.py`, which copies it with the tower cut to 2
  layers; the published tower has 24): CLIP ViT-L/14-336 (layer -2, class token dropped -> 576
  tokens per tile), image_grid_pinpoints [[336, 672], [672, 336], [672, 672], [1008, 336],
  [336, 1008]], a 2-layer GELU MLP 1024 -> 4096 -> 4096, and the Mistral-7B-Instruct-v0.2 decoder
  (text_config model_type "mistral": 32 layers, width 4096, MLP 14336, 32 heads, 8 KV heads,
  rope_theta 1e6, no sliding window, 32768 positions, vocabulary 32064, `<image>` = 32000).
  Verified against transformers' llava_next/convert_llava_next_weights_to_hf.py: vocabulary
  32000 + 2 padded to 64, the LlavaNextImageProcessor default pinpoints, LlavaNextConfig defaults
  (image token 32000, layer -2, "default"). Unverified: the decoder fields (the script copies
  mistralai/Mistral-7B-Instruct-v0.2's config.json, not found here).
- debug: the CLIP debug tower (32 px, 8-px patches: 16 tokens per tile), tiles of 1 x 2, 2 x 1
  and 2 x 2, and the Llama debug decoder; runs on a CPU in milliseconds.
"""

from dataclasses import dataclass

from vlmkit.models.clip.config import PRESETS as CLIP_PRESETS
from vlmkit.models.common.decoder_config import pick_preset
from vlmkit.models.llama.config import PRESETS as LLAMA_PRESETS
from vlmkit.models.llama.config import LlamaConfig
from vlmkit.models.llava.config import LlavaConfig
from vlmkit.models.parts.anyres import tile_grid, unpadded_grid

# transformers' LlavaNextConfig default (that of every llava-hf v1.6 checkpoint).
DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


@dataclass(kw_only=True)
class LlavaNextConfig(LlavaConfig):
    """`LlavaConfig` plus the tile grids an image may be cut into.

    `num_image_tokens` (inherited) is the tokens of one tile, and of the base image.
    """

    # (H, W) pixel resolutions the tiles may cover, multiples of the tower's image_size.
    image_grid_pinpoints: tuple[tuple[int, int], ...] = DEFAULT_PINPOINTS

    def __post_init__(self):
        super().__post_init__()
        self.image_grid_pinpoints = tuple((int(h), int(w)) for h, w in self.image_grid_pinpoints)
        tile = self.vision.image_size
        if not self.image_grid_pinpoints:
            raise ValueError("image_grid_pinpoints is empty")
        if any(h <= 0 or w <= 0 or h % tile or w % tile for h, w in self.image_grid_pinpoints):
            raise ValueError(f"image_grid_pinpoints {[list(p) for p in self.image_grid_pinpoints]} must be "
                             f"positive multiples of the vision image_size {tile}")
        if self.num_image_tokens != self.grid_side**2:
            raise ValueError(f"LLaVA-NeXT lays each tile's tokens out as a {self.grid_side} x {self.grid_side} grid, "
                             f"but the tower and vision_feature_select_strategy "
                             f"{self.features.vision_feature_select_strategy!r} give {self.num_image_tokens} tokens")

    @property
    def grid_side(self) -> int:
        """Feature-grid side of one tile: image_size / patch_size."""
        return self.vision.image_size // self.vision.patch_size

    def tile_grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of tiles for an original (height, width) image."""
        return tile_grid(height, width, self.image_grid_pinpoints, self.vision.image_size)

    def num_tiles(self, height: int, width: int) -> int:
        """Tiles the processor makes for an (height, width) image: the base image + rows * cols."""
        rows, cols = self.tile_grid(height, width)
        return 1 + rows * cols

    def tokens_for(self, height: int, width: int) -> int:
        """Image tokens for an (height, width) image: the base image's, then the unpadded tile
        grid with one `image_newline` per row."""
        rows, cols = self.tile_grid(height, width)
        g = self.grid_side
        rows, cols = unpadded_grid(height, width, rows * g, cols * g)
        return self.num_image_tokens + rows * (cols + 1)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LlavaNextConfig":
        return pick_preset(PRESETS, name, "LLaVA-NeXT", **overrides)


_MISTRAL_7B_INSTRUCT_V02 = LlamaConfig(
    vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
    num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=32768,
    tie_embeddings=False, bos_token_id=1, eos_token_id=2, hf_model_type="mistral",
)

PRESETS: dict[str, LlavaNextConfig] = {
    "llava-v1.6-mistral-7b-hf": LlavaNextConfig(
        vision=CLIP_PRESETS["clip-vit-large-patch14-336"], text=_MISTRAL_7B_INSTRUCT_V02, image_token_id=32000,
    ),
    "debug": LlavaNextConfig(
        vision=CLIP_PRESETS["debug"], text=LLAMA_PRESETS["debug"], image_token_id=511,
        image_grid_pinpoints=((32, 64), (64, 32), (64, 64)),
    ),
}
