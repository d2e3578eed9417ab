"""Data: image loading/preprocessing, tokenizers and the PaliGemma processor."""

from vlmkit.data.image import (
    DEFAULT_MAX_PIXELS,
    FAST_MAX_LEVEL_DIFF,
    FAST_MEAN_LEVEL_DIFF,
    ImageSource,
    fast_tolerance,
    load_image,
    preprocess_images,
    preprocess_images_fast,
    to_rgb,
)
from vlmkit.data.processor import IGNORE_INDEX, PaliGemmaProcessor
from vlmkit.data.tokenizer import IMAGE_TOKEN, Tokenizer
from vlmkit.data.tokenizer_build import build_paligemma_tokenizer, loc_tokens, seg_tokens

__all__ = [
    "DEFAULT_MAX_PIXELS", "FAST_MAX_LEVEL_DIFF", "FAST_MEAN_LEVEL_DIFF", "IGNORE_INDEX", "IMAGE_TOKEN",
    "ImageSource", "PaliGemmaProcessor", "Tokenizer", "build_paligemma_tokenizer", "fast_tolerance",
    "load_image", "loc_tokens", "preprocess_images", "preprocess_images_fast", "seg_tokens", "to_rgb",
]
