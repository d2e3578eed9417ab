"""Rotary position embeddings (RoPE), "rotate-half" layout as in Gemma, Llama, Mistral and Qwen2.

Angles are computed in float32 and cast to the activation dtype before rotating, matching the
reference: computing them in bf16 would lose precision at large positions.

Frequency scaling for long contexts is a `RopeScaling` (the `rope_parameters` of a transformers
config): `linear` divides every frequency by `factor` (position interpolation, kaiokendev /
arXiv:2306.15595); `llama3` (Llama 3.1+, "The Llama 3 Herd of Models" sec. 3.6) divides only the
low frequencies, whose wavelength exceeds `original_max_position_embeddings / low_freq_factor`,
keeps the high ones (wavelength below `.../ high_freq_factor`) and blends linearly in between.
`yarn` (arXiv:2309.00071) blends interpolated and original frequencies over a ramp between the
dimensions that turn `beta_fast` and `beta_slow` times in the original context, and multiplies
cos/sin by an attention factor (0.1 ln(factor) + 1 unless given). All three are fixed per model,
so the static cache and one compiled decode graph serve them unchanged.

`dynamic` NTK is read, and runs with the default frequencies: transformers changes them only
past max_position_embeddings, which generation refuses (past that length they would depend on the
current length, which a static cache and one compiled decode graph cannot follow).
Not supported: `longrope`, partial rotary factors.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Long-context RoPE frequency scaling (see the module docstring).

    kind: "linear", "llama3", "yarn" or "dynamic". factor: the context extension factor.
    "dynamic" (NTK, InternVL3-hf): transformers changes the base only for sequences longer than
    max_position_embeddings, which vlmkit never runs (generation refuses prompts past the
    model's context), so within it the frequencies are the default ones, exactly.
    original_max_position_embeddings: the pre-training context (llama3, yarn).
    low_freq_factor, high_freq_factor: llama3's band edges.
    beta_fast, beta_slow, truncate, attention_factor, mscale, mscale_all_dim: yarn's ramp and
    cos/sin multiplier, as transformers' `rope_parameters` name them.
    """

    kind: Literal["linear", "llama3", "yarn", "dynamic"]
    factor: float
    original_max_position_embeddings: int = 8192
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None

    def __post_init__(self):
        if self.kind not in ("linear", "llama3", "yarn", "dynamic"):
            raise ValueError(f"rope scaling kind {self.kind!r} is not supported (linear, llama3, yarn, dynamic)")
        if self.kind == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")

    @property
    def cos_sin_scale(self) -> float:
        """What cos and sin are multiplied by: YaRN's attention factor, else 1."""
        if self.kind != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        if self.mscale and self.mscale_all_dim:
            return float(_yarn_mscale(self.factor, self.mscale) / _yarn_mscale(self.factor, self.mscale_all_dim))
        return _yarn_mscale(self.factor)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] float32: theta ** (-2i / head_dim), then scaled."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    if scaling is not None and scaling.kind == "yarn":
        return _yarn(theta**exponents, head_dim, theta, scaling)
    inv_freq = 1.0 / (theta**exponents)
    if scaling is None or scaling.kind == "dynamic":  # dynamic: default below max positions (see RopeScaling)
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    return _llama3(inv_freq, scaling)


def _yarn(pos_freqs: torch.Tensor, head_dim: int, theta: float, s: RopeScaling) -> torch.Tensor:
    # As in _llama3, the float32 operations follow the reference's order (bit-equal frequencies).
    def correction_dim(rotations: float) -> float:
        # The dimension whose wavelength fits `rotations` times into the original context.
        return head_dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi)) / (
            2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp  # 1: keep the original frequency, 0: interpolate by `factor`
    return 1.0 / (s.factor * pos_freqs) * (1 - extrapolation) + 1.0 / pos_freqs * extrapolation


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
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, T] int -> (cos, sin), each [B, T, head_dim] in `dtype`, times `scale`
    (in float32, before the cast; YaRN's attention factor, see `RopeScaling.cos_sin_scale`)."""
    freqs = positions[..., None].float() * inv_freq.float()  # [B, T, hd/2]
    return angles_cos_sin(freqs, dtype, scale)


def angles_cos_sin(angles: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """angles [B, T, hd/2] float32 -> (cos, sin) [B, T, hd] in `dtype` (rotate-half layout: channel
    pair (j, j + hd/2) shares angle j), times `scale` (also used by M-RoPE)."""
    emb = torch.cat((angles, angles), dim=-1)  # [B, T, hd]
    cos, sin = emb.cos(), emb.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd]; cos/sin [B, T, hd] -> rotated x [B, H, T, hd]."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, hd]: broadcast over heads
    return x * cos + _rotate_half(x) * sin
