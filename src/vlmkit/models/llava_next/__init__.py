"""LLaVA-NeXT: LLaVA with "anyres" tiles, unpadding and a learned `image_newline`."""

from vlmkit.models.llava_next.config import LlavaNextConfig
from vlmkit.models.llava_next.model import LlavaNext

__all__ = ["LlavaNext", "LlavaNextConfig"]
