"""LoRA (arXiv:2106.09685): low-rank adapters on chosen `nn.Linear` layers, merge, save, load.

A wrapped layer computes ``base(x) + (alpha / rank) * B(A(dropout(x)))`` with A [r, in] drawn
like nn.Linear's default init and B [out, r] zero, so the adapted model starts out equal to the
base model. Only A and B train; the base weight is frozen.

`merge_lora` folds ``W + (alpha / rank) * B @ A`` into plain `nn.Linear`s, giving a model with the
original module names that `save_hf` / transformers load like any other. Adapters alone are saved
as safetensors (keys = module name + `.lora_A` / `.lora_B`) with the LoRA settings in the
file's metadata.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vlmkit.errors import CheckpointError, ConfigError
from vlmkit.training.config import LoraConfig


class LoRALinear(nn.Module):
    """nn.Linear plus a low-rank update. x [..., in] -> [..., out], in the base weight's dtype."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default init
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # [..., r] then [..., out]
        return self.base(x) + self.scale * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear whose output equals this layer's (without dropout)."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            # Fold in float32: for bf16 weights, rounding W and B @ A separately loses bits.
            delta = self.scale * (self.lora_B.float() @ self.lora_A.float())  # [out, in]
            out.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


def _set_child(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap every nn.Linear whose name matches one of `cfg.targets` (re.search) in LoRALinear,
    and freeze every other parameter of the model. Returns the wrapped module names.

    Raises:
        ConfigError: a target is not a valid regex or no Linear matches any target.
    """
    try:
        patterns = [re.compile(t) for t in cfg.targets]
    except re.error as e:
        raise ConfigError(f"lora.targets has an invalid regex ({e})") from None
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and any(p.search(n) for p in patterns)]
    if not names:
        raise ConfigError(f"lora.targets {list(cfg.targets)} match no nn.Linear of the model")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _set_child(model, name, LoRALinear(model.get_submodule(name), cfg.rank, cfg.alpha, cfg.dropout))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear, in place; returns `model`."""
    for name, module in lora_modules(model).items():
        _set_child(model, name, module.merged())
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only: {"<module>.lora_A": [r, in], "<module>.lora_B": [out, r]}."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{name}.lora_A"] = m.lora_A.detach()
        out[f"{name}.lora_B"] = m.lora_B.detach()
    return out


def save_lora(model: nn.Module, path: str | Path, cfg: LoraConfig) -> Path:
    """Write the adapters to one safetensors file, the LoRA settings in its metadata."""
    tensors = {k: v.contiguous().cpu() for k, v in lora_state_dict(model).items()}
    if not tensors:
        raise ConfigError("the model has no LoRA adapters to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "lora_config": json.dumps(asdict(cfg))})
    tmp.replace(path)  # atomic: a reader never sees a half-written file
    return path


def read_lora_config(path: str | Path) -> LoraConfig:
    """The LoraConfig stored in an adapter file's metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["lora_config"])
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is not a vlmkit LoRA adapter file ({type(e).__name__}: {e})") from None
    meta["targets"] = tuple(meta["targets"])
    return LoraConfig(**meta)


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Add the adapters saved at `path` to a base model (wrapping the same layers); in place.

    Raises:
        CheckpointError: the file's adapters do not match the model's layers or shapes.
    """
    cfg = read_lora_config(path)
    if not lora_modules(model):
        apply_lora(model, cfg)
    own = lora_state_dict(model)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(own):
            missing, extra = sorted(set(own) - keys)[:3], sorted(keys - set(own))[:3]
            raise CheckpointError(f"{path}: adapter keys do not match the model (missing {missing}, extra {extra})")
        with torch.no_grad():
            for key in sorted(keys):
                t = f.get_tensor(key)
                if t.shape != own[key].shape:
                    raise CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, model needs {tuple(own[key].shape)}")
                own[key].copy_(t)
    return model
