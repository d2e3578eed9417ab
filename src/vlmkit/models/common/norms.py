"""Normalisation layers.

Gemma's RMSNorm stores `w` and scales by `(1 + w)` (weights start at zero, so the layer starts as
the identity); it normalises in float32 and multiplies before casting back, which differs from
Llama's (cast, then multiply) in bf16. Both behaviours are one flag, `unit_offset`.
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis.

    Args:
        dim: size of the last axis.
        eps: added to the mean square before the reciprocal square root.
        unit_offset: scale by `(1 + weight)` (Gemma) instead of `weight`.
    """

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = True):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] any float dtype -> same shape and dtype."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float()
        scale = 1.0 + w if self.unit_offset else w
        # Multiply in float32, then cast: this is Gemma's order (see module docstring).
        return (xf * scale).type_as(x)
