"""A static, preallocated key/value cache (gpt-fast style).

Preallocating [B, Hkv, S_max, hd] once keeps every decode step the same shape, which is what
lets `torch.compile` build one graph for the whole generation and avoids re-allocating as the
sequence grows.
"""

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer for up to `max_len` slots.

    Buffers `k` and `v`: [B, Hkv, max_len, hd] in `dtype`.
    """

    def __init__(
        self,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, num_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(
        self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, T, hd] at `slots` [T] int64; return the full cache [B, Hkv, S, hd]."""
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v
