"""Rotary position embeddings (RoPE), "rotate-half" layout as in Gemma, Llama, Mistral and Qwen2.

Angles are computed in float32 and cast to the activation dtype before rotating, matching the
reference: computing them in bf16 would lose precision at large positions.

Frequency scaling for long contexts is a `RopeScaling` (the `rope_parameters` of a transformers
config): `linear` divides every frequency by `factor` (position interpolation, kaiokendev /
arXiv:2306.15595); `llama3` (Llama 3.1+, "The Llama 3 Herd of Models" sec. 3.6) divides only the
low frequencies, whose wavelength exceeds `original_max_position_embeddings / low_freq_factor`,
keeps the high ones (wavelength below `.../ high_freq_factor`) and blends linearly in between.
Both only change the inverse frequencies, so cos/sin and caching are unchanged.

Not supported: `dynamic` NTK (its frequencies depend on the current length, which a static cache
and one compiled decode graph cannot follow), `yarn`, `longrope`, partial rotary factors.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Long-context RoPE frequency scaling (see the module docstring).

    kind: "linear" or "llama3". factor: the context extension factor. The other three fields are
    read by "llama3" only.
    """

    kind: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.kind not in ("linear", "llama3"):
            raise ValueError(f"rope scaling kind {self.kind!r} is not supported (linear, llama3)")
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] float32: theta ** (-2i / head_dim), then scaled."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    return _llama3(inv_freq, scaling)


def _llama3(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    # The float32 operations run in the reference's order so that the frequencies are bit-equal.
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


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
