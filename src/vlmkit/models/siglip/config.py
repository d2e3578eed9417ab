"""SigLIP vision tower config.

Presets follow the published checkpoints (arXiv:2303.15343; HF google/siglip-*):
- so400m-14-224 / -448 / -896: the shape-optimised 400M ViT (width 1152, depth 27, MLP 4304,
  16 heads, patch 14) at the three PaliGemma resolutions (256 / 1024 / 4096 patches).
- b16-224: ViT-B/16 at 224 (google/siglip-base-patch16-224), 196 patches.
"""

from dataclasses import dataclass, replace
from typing import Literal

from vlmkit.models.common.activations import Activation
from vlmkit.models.common.patches import PatchGrid

# Where the final LayerNorm applies: to every output token (SigLIP: the features PaliGemma reads)
# or only to the pooled class token (CLIP: `last_hidden_state` stays un-normed).
PostNorm = Literal["tokens", "pooled"]


@dataclass(kw_only=True)
class SiglipVisionConfig(PatchGrid):
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    # Multihead attention-pooling ("MAP") head: a learned probe attends over the patch tokens.
    # PaliGemma does not use it (it reads all patch tokens); contrastive SigLIP does.
    use_head: bool = False
    # The CLIP ViT (arXiv:2103.00020) is this tower with the switches below flipped (see
    # `vlmkit.models.clip.ClipVisionConfig`); SigLIP has none of them.
    # A learned class token before the patches; positions then cover N + 1 tokens.
    class_token: bool = False
    # A LayerNorm on the embeddings before the first block (HF's `pre_layrnorm`).
    pre_norm: bool = False
    # Bias on the patch convolution (CLIP has none).
    patch_bias: bool = True
    hidden_act: Activation = "gelu_tanh"
    post_norm: PostNorm = "tokens"
    # Idefics2/3 (NaViT-style, arXiv:2307.06304): each patch's position id is its fractional
    # (row, col) in the image's real (unpadded) patch grid, bucketed onto the grid x grid table,
    # so padded or smaller images reuse the trained table; padded patches are masked as keys.
    bucket_positions: bool = False

    def __post_init__(self):
        if self.post_norm == "pooled" and not self.class_token:
            raise ValueError("post_norm='pooled' normalises the class token, which needs class_token=True")
        if self.bucket_positions and self.class_token:
            raise ValueError("bucket_positions places patches only; it does not support a class token")
        # The patch conv drops a remainder; only the Idefics3 towers are published with one
        # (SmolVLM-Instruct: 384 px, 14 px patches -> 27 x 27).
        self.check_patch_grid(allow_remainder=self.bucket_positions)

    @property
    def num_positions(self) -> int:
        """Tokens the encoder sees: the patches, plus the class token if there is one."""
        return self.num_patches + int(self.class_token)

    @classmethod
    def presets(cls) -> dict[str, "SiglipVisionConfig"]:
        """This class's named presets (the CLIP subclass has its own)."""
        return PRESETS

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SiglipVisionConfig":
        presets = cls.presets()
        if name not in presets:
            raise KeyError(f"unknown {cls.__name__} preset {name!r}; choose from {sorted(presets)}")
        return replace(presets[name], **overrides)


_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16, patch_size=14)

PRESETS: dict[str, SiglipVisionConfig] = {
    "so400m-14-224": SiglipVisionConfig(image_size=224, **_SO400M),
    "so400m-14-448": SiglipVisionConfig(image_size=448, **_SO400M),
    "so400m-14-896": SiglipVisionConfig(image_size=896, **_SO400M),
    "b16-224": SiglipVisionConfig(
        hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12, image_size=224,
        patch_size=16, use_head=True,
    ),
    # vlmkit's own bundled model (vlmkit-shapes-tiny, trained by recipes/shapes_tiny.py): 64 px
    # synthetic scenes, 8 px patches -> 64 image tokens (an 8x8 grid). 16 px patches train 1.7x
    # faster on 2 CPU cores, but squeeze 768 pixel values into 128 dims per token and, in
    # scripts/diagnose_image_use.py, the decoder learned to ignore them at LRs where 8 px did not.
    "shapes-tiny": SiglipVisionConfig(
        hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4, image_size=64, patch_size=8,
    ),
    "debug": SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, image_size=32, patch_size=8,
    ),
}


# --- Text tower and two-tower (contrastive) model ------------------------------------------------
# Text presets follow the published two-tower checkpoints (HF google/siglip-*; the text tower of
# each has the same width/depth as its vision tower, a 32000-piece SentencePiece vocabulary and
# 64 positions): base-patch16-224, large-patch16-256, so400m-patch14-224 (whose text tower is
# also that of so400m-patch14-384).

# Loss families of a two-tower model; `sigmoid` is SigLIP's pairwise loss, `softmax` CLIP's InfoNCE.
CONTRASTIVE_LOSSES = ("sigmoid", "softmax")


@dataclass(kw_only=True)
class SiglipTextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int = 64
    # Width of the pooled output after the linear `head`; None means hidden_size (as in HF).
    projection_size: int | None = None
    layer_norm_eps: float = 1e-6
    # Kept only so that config.json round-trips; the tower itself does not use them.
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.projection_size is None:
            self.projection_size = self.hidden_size


@dataclass(kw_only=True)
class SiglipConfig:
    """Two-tower image-text model: a SigLIP vision tower with its MAP head and a text tower.

    `contrastive_loss` picks the published recipe, including the initial temperature:
    - "sigmoid" (SigLIP, arXiv:2303.15343): t' = log 10, bias b = -10, so that the initial
      logits (about -10) match the prior that nearly every pair is a negative.
    - "softmax" (CLIP, arXiv:2103.00020): t' = log(1 / 0.07), no bias (softmax is shift-invariant).
    The `init_*` fields override those values; they only matter for freshly built models.
    """

    vision: SiglipVisionConfig
    text: SiglipTextConfig
    contrastive_loss: str = "sigmoid"
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None

    def __post_init__(self):
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}")
        if not self.vision.use_head:
            raise ValueError("a two-tower model needs the vision MAP head (vision.use_head=True)")
        if self.text.projection_size != self.vision.hidden_size:
            raise ValueError(
                f"text projection_size {self.text.projection_size} != vision hidden_size "
                f"{self.vision.hidden_size}: the two embeddings must have the same width"
            )
        if self.contrastive_loss == "softmax" and self.init_logit_bias is not None:
            raise ValueError("the softmax (CLIP) variant has no logit bias")

    @property
    def embed_dim(self) -> int:
        return self.vision.hidden_size

    @property
    def has_bias(self) -> bool:
        return self.contrastive_loss == "sigmoid"

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SiglipConfig":
        if name not in TWO_TOWER_PRESETS:
            raise KeyError(f"unknown SigLIP two-tower preset {name!r}; choose from {sorted(TWO_TOWER_PRESETS)}")
        return replace(TWO_TOWER_PRESETS[name], **overrides)


def _text(width: int, mlp: int, depth: int, heads: int) -> SiglipTextConfig:
    return SiglipTextConfig(
        vocab_size=32000, hidden_size=width, intermediate_size=mlp, num_layers=depth, num_heads=heads,
    )


TEXT_PRESETS: dict[str, SiglipTextConfig] = {
    "base-patch16-224": _text(768, 3072, 12, 12),
    "large-patch16-256": _text(1024, 4096, 24, 16),
    "so400m": _text(1152, 4304, 27, 16),
    "debug": SiglipTextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, max_position_embeddings=16,
        pad_token_id=1, bos_token_id=2, eos_token_id=3,
    ),
}

TWO_TOWER_PRESETS: dict[str, SiglipConfig] = {
    "base-patch16-224": SiglipConfig(vision=PRESETS["b16-224"], text=TEXT_PRESETS["base-patch16-224"]),
    "large-patch16-256": SiglipConfig(
        vision=SiglipVisionConfig(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                                  image_size=256, patch_size=16, use_head=True),
        text=TEXT_PRESETS["large-patch16-256"],
    ),
    # google/siglip-so400m-patch14-384 is not listed: 384 is not a multiple of 14 (the reference
    # conv drops the remainder), which SiglipVisionConfig rejects.
    "so400m-patch14-224": SiglipConfig(
        vision=replace(PRESETS["so400m-14-224"], use_head=True), text=TEXT_PRESETS["so400m"],
    ),
    "debug": SiglipConfig(vision=replace(PRESETS["debug"], use_head=True), text=TEXT_PRESETS["debug"]),
    "debug-clip": SiglipConfig(
        vision=replace(PRESETS["debug"], use_head=True), text=TEXT_PRESETS["debug"], contrastive_loss="softmax",
    ),
}


# SigLIP 2 fixed-resolution checkpoints (arXiv:2502.14786; HF google/siglip2-<size>-patch<p>-<res>):
# SigLIP's layout exactly (transformers loads them as SiglipModel, model_type "siglip", with the
# conv patch embedding), a text tower of the vision width over Gemma's 256k-piece vocabulary and
# 64 positions. The NaFlex checkpoints are the siglip2 family (`vlmkit.models.siglip2`).
_SIGLIP2_FIXED = [  # (size, width, mlp, depth, heads, patch, resolutions)
    ("base", 768, 3072, 12, 12, 16, (224, 256, 384, 512)), ("large", 1024, 4096, 24, 16, 16, (256, 384, 512)),
    ("so400m", 1152, 4304, 27, 16, 14, (224,)), ("so400m", 1152, 4304, 27, 16, 16, (256, 384, 512)),
]


def _siglip2_fixed_presets() -> dict[str, SiglipConfig]:
    presets = {}
    for size, width, mlp, depth, heads, patch, resolutions in _SIGLIP2_FIXED:
        shape = dict(hidden_size=width, intermediate_size=mlp, num_layers=depth, num_heads=heads)
        for res in resolutions:
            presets[f"siglip2-{size}-patch{patch}-{res}"] = SiglipConfig(
                vision=SiglipVisionConfig(**shape, image_size=res, patch_size=patch, use_head=True),
                # Gemma's special ids (<pad> 0, <eos> 1, <bos> 2), for config.json only.
                text=SiglipTextConfig(vocab_size=256000, **shape, pad_token_id=0, eos_token_id=1, bos_token_id=2),
            )
    return presets


TWO_TOWER_PRESETS.update(_siglip2_fixed_presets())
