"""Normalisation layers.

RMSNorm in two published variants, each a flag:
- `unit_offset`: Gemma stores `w` and scales by `(1 + w)` (weights start at zero, so the layer
  starts as the identity); Llama, Mistral and Qwen2 store the scale itself.
- `scale_in_fp32`: Gemma multiplies by the scale in float32 and casts the product back; Llama
  (and Mistral, Qwen2) casts the normalised activations back first and multiplies by the weight
  in its own dtype. In float32 both are the same; in bf16 they round differently, and
  bit-exactness with the reference needs the right one.
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis (statistics always in float32).

    Args:
        dim: size of the last axis.
        eps: added to the mean square before the reciprocal square root.
        unit_offset: scale by `(1 + weight)` (Gemma) instead of `weight`.
        scale_in_fp32: multiply by the scale in float32, then cast (Gemma); else cast, then
            multiply in the weight dtype (Llama).
    """

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = True, scale_in_fp32: bool = True):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.scale_in_fp32 = scale_in_fp32
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., dim] any float dtype -> same shape and dtype."""
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if not self.scale_in_fp32:
            scale = 1.0 + self.weight if self.unit_offset else self.weight
            return (scale * xf.to(x.dtype)).to(x.dtype)
        w = self.weight.float()
        scale = 1.0 + w if self.unit_offset else w
        return (xf * scale).type_as(x)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, unit_offset={self.unit_offset}, "
                f"scale_in_fp32={self.scale_in_fp32}")
