"""Summaries of checkpoints: family, config and parameter counts per part, without loading weights."""

from pathlib import Path

import torch
from torch import nn

from vlmkit.validate import build_config
from vlmkit.weights.hf import read_config
from vlmkit.weights.registry import resolve_model
from vlmkit.weights.safetensors_io import SafetensorsReader


def part_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part: each child module, and each parameter held by the model
    itself (e.g. a logit scale). Shared (tied) tensors count once, in the first part holding them."""
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            part = name.split(".")[0]
            counts[part] = counts.get(part, 0) + p.numel()
    return counts


def model_info(source: str | Path | None) -> dict:
    """Family, config summary and parameter counts per part of a folder or bundled model.

    Reads config.json and the safetensors headers only: the model is built on the meta device.
    """
    folder = resolve_model(source)
    d, fam = read_config(folder)
    cfg = build_config(fam.config_from_hf, d, folder / "config.json")
    with torch.device("meta"):
        model = fam.model_class(cfg)
    reader = SafetensorsReader(folder)
    dtypes = {reader.header(key)[1] for key in reader.keys()}
    info = {"folder": str(folder), "family": fam.name, "model_type": d.get("model_type"),
            "dtype": ", ".join(sorted(dtypes))}
    for name in ("vision", "text"):
        sub = getattr(cfg, name, None)
        if sub is not None:
            info[f"{name}_config"] = {k: v for k, v in vars(sub).items() if v is not None}
    if hasattr(cfg, "num_image_tokens"):
        info["num_image_tokens"] = cfg.num_image_tokens
        info["image_token_id"] = cfg.image_token_id
    counts = part_counts(model)
    info.update({f"params.{k}": f"{v:,}" for k, v in counts.items()})
    info["params.total"] = f"{sum(counts.values()):,}"
    return info
