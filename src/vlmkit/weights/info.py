"""Summaries of checkpoints: config and parameter counts per component, without loading weights."""

import math
from pathlib import Path

from vlmkit.validate import build_config
from vlmkit.weights.hf import read_config
from vlmkit.weights.registry import resolve_model
from vlmkit.weights.safetensors_io import SafetensorsReader


def model_info(source: str | Path | None) -> dict:
    """Config summary and parameter counts of a folder or bundled model (reads headers only)."""
    folder = resolve_model(source)
    d, fam = read_config(folder)
    cfg = build_config(fam.config_from_hf, d, folder / "config.json")
    reader = SafetensorsReader(folder)
    counts: dict[str, int] = {}
    dtypes: set[str] = set()
    for key in reader.keys():
        shape, dtype = reader.header(key)
        part = fam.normalise_key(key).split(".")[0]
        counts[part] = counts.get(part, 0) + math.prod(shape)
        dtypes.add(dtype)
    info = {"folder": str(folder), "model_type": d.get("model_type"), "dtype": ", ".join(sorted(dtypes))}
    for name in ("vision", "text"):
        sub = getattr(cfg, name, None)
        if sub is not None:
            info[f"{name}_config"] = {k: v for k, v in vars(sub).items() if v is not None}
    if hasattr(cfg, "num_image_tokens"):
        info["num_image_tokens"] = cfg.num_image_tokens
        info["image_token_id"] = cfg.image_token_id
    info.update({f"params.{k}": f"{v:,}" for k, v in counts.items()})
    info["params.total"] = f"{sum(counts.values()):,}"
    return info
