"""PaliGemma config: a SigLIP vision config, a Gemma config and how they are joined.

Presets follow the published checkpoints:
- paligemma-3b-{224,448,896}: PaliGemma 1 (arXiv:2407.07726, HF google/paligemma-3b-pt-*),
  SigLIP So400m/14 + Gemma 2B.
- paligemma2-{3b,10b,28b}-{224,448,896}: PaliGemma 2 (arXiv:2412.03555, HF
  google/paligemma2-*-pt-*), SigLIP So400m/14 + Gemma 2 2B / 9B / 27B.
"""

from dataclasses import dataclass, replace

from vlmkit.models.gemma.config import PRESETS as GEMMA_PRESETS
from vlmkit.models.gemma.config import GemmaConfig
from vlmkit.models.siglip.config import PRESETS as SIGLIP_PRESETS
from vlmkit.models.siglip.config import SiglipVisionConfig

PALIGEMMA_IMAGE_TOKEN_ID = 257152


@dataclass(kw_only=True)
class PaliGemmaConfig:
    vision: SiglipVisionConfig
    text: GemmaConfig
    # Id of the `<image>` placeholder. Its rows are overwritten by image features; an id at or
    # above the text vocabulary is allowed and looked up as 0, as the reference does.
    image_token_id: int = PALIGEMMA_IMAGE_TOKEN_ID

    @property
    def num_image_tokens(self) -> int:
        """Tokens each image contributes: one per vision patch."""
        return self.vision.num_patches

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "PaliGemmaConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown PaliGemma preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def _pg(vision: str, text: str, **kw) -> PaliGemmaConfig:
    return PaliGemmaConfig(vision=SIGLIP_PRESETS[vision], text=GEMMA_PRESETS[text], **kw)


PRESETS: dict[str, PaliGemmaConfig] = {
    **{f"paligemma-3b-{r}": _pg(f"so400m-14-{r}", "gemma-2b") for r in (224, 448, 896)},
    **{
        f"paligemma2-{size}-{r}": _pg(f"so400m-14-{r}", f"gemma2-{lm}")
        for size, lm in (("3b", "2b"), ("10b", "9b"), ("28b", "27b"))
        for r in (224, 448, 896)
    },
    # Ours, not a published checkpoint: the bundled vlmkit-shapes-tiny (image_token_id and
    # vocabulary are replaced by the manifest-trained tokenizer's when training from scratch).
    "shapes-tiny": _pg("shapes-tiny", "shapes-tiny", image_token_id=2047),
    "debug": _pg("debug", "debug", image_token_id=511),
    "debug-pg2": _pg("debug", "debug-gemma2", image_token_id=511),
}
