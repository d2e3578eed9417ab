"""LLaVA-NeXT <-> Hugging Face names and configs (transformers' LlavaNextForConditionalGeneration).

LLaVA's layout and config fields (models/llava/hf_mapping, reused) plus two of its own: the
`image_newline` vector (`image_newline` on the hub, `model.image_newline` in transformers 5's
module names) and `image_grid_pinpoints`. transformers 5.24 ignores the older
`use_image_newline_parameter` flag (the vector is always used), and so do we.
"""

from dataclasses import fields

from vlmkit.models.common.mapping import Table
from vlmkit.models.llava import hf_mapping as llava_map
from vlmkit.models.llava_next.config import DEFAULT_PINPOINTS, LlavaNextConfig

__all__ = ["config_from_hf", "config_to_hf", "normalise_key", "table", "to_hub_name"]

to_hub_name = llava_map.to_hub_name


def table(cfg: LlavaNextConfig) -> Table:
    """Ours -> canonical names: LLaVA's table and the newline vector."""
    return llava_map.table(cfg) + [("image_newline", "image_newline")]


def normalise_key(key: str) -> str:
    return llava_map.normalise_key("image_newline" if key == "model.image_newline" else key)


def config_from_hf(d: dict) -> LlavaNextConfig:
    base = llava_map.config_from_hf(d)
    pinpoints = d.get("image_grid_pinpoints") or DEFAULT_PINPOINTS
    if any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in pinpoints):
        raise ValueError(f"image_grid_pinpoints must be [[height, width], ...], got {pinpoints!r}")
    return LlavaNextConfig(**{f.name: getattr(base, f.name) for f in fields(base)}, image_grid_pinpoints=pinpoints)


def config_to_hf(c: LlavaNextConfig) -> dict:
    return {**llava_map.config_to_hf(c), "architectures": ["LlavaNextForConditionalGeneration"],
            "model_type": "llava_next", "image_grid_pinpoints": [list(p) for p in c.image_grid_pinpoints]}
