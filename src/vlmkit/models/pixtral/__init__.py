"""Pixtral (arXiv:2410.07073) in transformers' format: LLaVA with the Pixtral-ViT tower.

The tower is `models.parts.pixtral_vit`; this package holds its HF mapping, its registry record
(`pixtral_vision`, HF model_type "pixtral") and the presets of the whole model, which is the
`llava` family (HF model_type "llava", LlavaForConditionalGeneration) with this tower.
"""

from vlmkit.models.parts.pixtral_vit import PixtralVisionConfig, PixtralVisionTower

__all__ = ["PixtralVisionConfig", "PixtralVisionTower"]
