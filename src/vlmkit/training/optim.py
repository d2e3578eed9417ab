"""AdamW with per-component parameter groups, and the warm-up + cosine learning-rate schedule.

The schedule is a pure function of the step (`lr_factor`), applied by setting each group's `lr`
before `optimizer.step()`. Resuming therefore needs only the step number, not a scheduler object.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlmkit.training.config import COMPONENTS, LrScaleConfig, OptimConfig
from vlmkit.training.freeze import component_of


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps` (step 0 gets 1/warmup, never 0, so the first update
    counts), then a half cosine from 1 towards `min_ratio`, reached one step after the last
    (so the last step still learns when min_ratio is 0).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _decays(name: str, p: torch.Tensor) -> bool:
    # Weight decay shrinks matrices only: decaying norm scales, biases or position/token tables
    # towards 0 changes what the pretrained model computes rather than regularising it.
    return p.ndim >= 2 and not name.endswith(("embed_tokens.weight", "position_embedding.weight"))


def param_groups(model: nn.Module, optim: OptimConfig, scale: LrScaleConfig) -> list[dict]:
    """Trainable parameters grouped by (component, decays); each group records `base_lr`.

    Group order is fixed (components in `COMPONENTS` order, decayed first), so the optimizer
    state of a checkpoint maps onto the same groups on resume.
    """
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((component_of(name), _decays(name, p)), []).append(p)
    groups = []
    for component in COMPONENTS:
        for decays in (True, False):
            params = buckets.get((component, decays))
            if params:
                base_lr = optim.lr * getattr(scale, component)
                groups.append(dict(params=params, lr=base_lr, base_lr=base_lr, component=component,
                                   weight_decay=optim.weight_decay if decays else 0.0))
    return groups


def build_optimizer(model: nn.Module, optim: OptimConfig, scale: LrScaleConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` (frozen ones are left out entirely)."""
    # foreach=False: the single-tensor path gives the same bits whatever the grouping, which the
    # DDP/FSDP-vs-single-process tests rely on; on small models it is not slower.
    return torch.optim.AdamW(param_groups(model, optim, scale), lr=optim.lr, betas=optim.betas,
                             eps=optim.eps, foreach=False)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's lr to base_lr * factor; returns the first group's lr (for logging)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
