"""CoCa config (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models",
arXiv:2205.01917).

Presets:
- base: CoCa-Base from the paper's Table 1 (ViT 12 layers at width 768 / MLP 3072 / 12 heads,
  patch 18 at 288 px; 12 unimodal + 12 multimodal decoder layers at the same width; 256
  captioning queries; 64k vocabulary; loss weights lambda_Con = 1, lambda_Cap = 2).
- open-clip-b32: the shape of open_clip's coca_ViT-B-32, for the training benchmark.
- small: a ~20M-parameter model for experiments on one GPU (or slowly on CPU).
- debug: a few thousand parameters; a forward pass takes milliseconds on CPU.
"""

from dataclasses import dataclass, replace

from vlmkit.models.siglip.config import CONTRASTIVE_LOSSES, SiglipVisionConfig


@dataclass(kw_only=True)
class CocaConfig:
    """Image encoder (`vision`, a SigLIP-style ViT without its MAP head), two attentional poolers,
    a unimodal text decoder and a multimodal decoder of `width`.

    Text ids are 0..vocab_size-1; captions start with `bos_token_id` and end with
    `eos_token_id`; `pad_token_id` only fills generated rows after their EOS.
    """

    vision: SiglipVisionConfig
    vocab_size: int
    width: int
    num_heads: int
    mlp_dim: int
    num_unimodal_layers: int
    num_multimodal_layers: int
    # Text positions available to captions (BOS and EOS included); the CLS token has its own.
    context_length: int
    embed_dim: int
    num_caption_queries: int = 256
    layer_norm_eps: float = 1e-6
    # "softmax" is the paper's InfoNCE; "sigmoid" swaps in SigLIP's pairwise loss (adds a bias).
    contrastive_loss: str = "softmax"
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2

    def __post_init__(self):
        if self.vision.use_head:
            raise ValueError("CoCa pools with its own attentional poolers: set vision.use_head=False")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not a multiple of num_heads {self.num_heads}")
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}")
        if self.contrastive_weight < 0 or self.caption_weight < 0:
            raise ValueError("loss weights must be >= 0")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} {getattr(self, name)} is outside the vocabulary of {self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CocaConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown CoCa preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, CocaConfig] = {
    "base": CocaConfig(
        vision=SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                                  image_size=288, patch_size=18),
        vocab_size=64000, width=768, num_heads=12, mlp_dim=3072, num_unimodal_layers=12,
        num_multimodal_layers=12, context_length=64, embed_dim=768,
    ),
    "small": CocaConfig(
        vision=SiglipVisionConfig(hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6,
                                  image_size=64, patch_size=8),
        vocab_size=8192, width=384, num_heads=6, mlp_dim=1536, num_unimodal_layers=4,
        num_multimodal_layers=4, context_length=32, embed_dim=256, num_caption_queries=32,
    ),
    # Mirrors open_clip's coca_ViT-B-32 (model_configs/coca_ViT-B-32.json) for
    # benchmarks/bench_train.py: ViT-B/32 at 224, a 512-wide text side with 49408-token vocabulary
    # and 76 text positions, 12 unimodal + 12 multimodal layers, 256 caption queries. Not the same
    # network: open_clip's multimodal layers have two MLPs (see model.py) and its ViT a class token.
    "open-clip-b32": CocaConfig(
        vision=SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_layers=12, num_heads=12,
                                  image_size=224, patch_size=32),
        vocab_size=49408, width=512, num_heads=8, mlp_dim=2048, num_unimodal_layers=12,
        num_multimodal_layers=12, context_length=76, embed_dim=512,
    ),
    "debug": CocaConfig(
        vision=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                                  image_size=32, patch_size=8),
        vocab_size=64, width=32, num_heads=4, mlp_dim=64, num_unimodal_layers=2,
        num_multimodal_layers=2, context_length=16, embed_dim=24, num_caption_queries=8,
    ),
}
