"""Rotary position embeddings (RoPE), "rotate-half" layout as in Gemma and Llama.

Angles are computed in float32 and cast to the activation dtype before rotating, matching the
reference: computing them in bf16 would lose precision at large positions.
"""

import torch


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] float32: theta ** (-2i / head_dim)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, T] int -> (cos, sin), each [B, T, head_dim] in `dtype`."""
    freqs = positions[..., None].float() * inv_freq.float()  # [B, T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, hd]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd]; cos/sin [B, T, hd] -> rotated x [B, H, T, hd]."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, hd]: broadcast over heads
    return x * cos + _rotate_half(x) * sin
