"""InternViT, the vision encoder of InternVL (arXiv:2312.14238; InternVL 2.5/3 use
InternViT-300M-448px), as transformers' InternVLVisionModel computes it; single-device PyTorch.

Axes: B images (tiles), N patches, P = N + 1 positions (class token first), D width, H heads,
hd head dim, g patches per side.

class token + patch conv -> + learned positions (covering the class token) -> blocks:
    x = x + lambda_1 * attn(norm1(x));  x = x + lambda_2 * mlp(norm2(x))
-> optional final LayerNorm (transformers' `use_mean_pooling=False`; InternVL3 has none).
Attention has optional q/k/v biases and an optional RMSNorm on the full-width q and k (QK-norm,
InternViT-6B) before the heads are split; the MLP is fc1 -> exact GELU -> fc2.

Why a part of its own and not switches of `SiglipVisionTower`: InternViT differs in every
sub-layer at once (attention biases and QK-norm, the per-channel layer scale of both residual
branches, LayerNorm or RMSNorm per `norm_type`, a final norm that only `last_hidden_state`
sees); as switches they would put a branch in each of SigLIP's attention, block and tower
forwards that SigLIP, CLIP and PaliGemma never take. What is shared is reused: `attend`
(SDPA), `MLP`, `RMSNorm`, the activations, and the `hidden_states(pixel_values, layers)`
contract of `models.parts.vision`. The class token and position table keep transformers'
[1, 1, D] / [1, P, D] shapes, so the weight mapping is names only.

Not supported: position interpolation for other tile sizes, the masked-image-modelling
`mask_token`, towers without absolute positions, dropout.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlmkit.models.common.activations import ACTIVATIONS, Activation
from vlmkit.models.common.attention import attend
from vlmkit.models.common.mlp import MLP
from vlmkit.models.common.norms import RMSNorm
from vlmkit.models.common.patches import PatchGrid

NormType = Literal["layer_norm", "rms_norm"]


@dataclass(kw_only=True)
class InternVitConfig(PatchGrid):
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int  # square tiles
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    # Biases on q/k/v (HF `attention_bias`; InternViT-300M has them); the output proj always has one.
    qkv_bias: bool = False
    # RMSNorm (eps 1e-6, over the full width) on q and k before the head split (InternViT-6B).
    qk_norm: bool = False
    norm_type: NormType = "layer_norm"
    # Initial value of the layer-scale vectors lambda_1 / lambda_2 (fresh models only).
    layer_scale_init: float = 0.1
    # A final LayerNorm on `forward`'s output (HF `use_mean_pooling=False`).
    final_norm: bool = False
    hidden_act: Activation = "gelu"

    def __post_init__(self):
        self.check_patch_grid()
        if self.norm_type not in ("layer_norm", "rms_norm"):
            raise ValueError(f"norm_type must be 'layer_norm' or 'rms_norm', got {self.norm_type!r}")

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1


def _norm(cfg: InternVitConfig, dim: int) -> nn.Module:
    if cfg.norm_type == "rms_norm":  # transformers' InternVLVisionRMSNorm: cast, then scale by w
        return RMSNorm(dim, eps=cfg.layer_norm_eps, unit_offset=False, scale_in_fp32=False)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps)


class InternAttention(nn.Module):
    """Bidirectional multi-head self-attention with optional QK-norm. x [B, P, D] -> [B, P, D]."""

    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        D = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q_proj = nn.Linear(D, D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(D, D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(D, D, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(D, D)
        norm = (lambda: RMSNorm(D, eps=1e-6, unit_offset=False, scale_in_fp32=False)) if cfg.qk_norm else nn.Identity
        self.q_norm, self.k_norm = norm(), norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, P, D = x.shape
        hd = D // self.num_heads
        q = self.q_norm(self.q_proj(x)).view(B, P, -1, hd).transpose(1, 2)  # [B, H, P, hd]
        k = self.k_norm(self.k_proj(x)).view(B, P, -1, hd).transpose(1, 2)  # [B, H, P, hd]
        v = self.v_proj(x).view(B, P, -1, hd).transpose(1, 2)  # [B, H, P, hd]
        out = attend(q, k, v, None, hd**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(B, P, D))  # [B, P, D]


class InternBlock(nn.Module):
    """Pre-norm block whose two residual branches are scaled per channel (layer scale)."""

    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        D = cfg.hidden_size
        self.norm1 = _norm(cfg, D)
        self.attn = InternAttention(cfg)
        self.norm2 = _norm(cfg, D)
        self.mlp = MLP(D, cfg.intermediate_size, ACTIVATIONS[cfg.hidden_act])
        self.lambda_1 = nn.Parameter(torch.full((D,), cfg.layer_scale_init))
        self.lambda_2 = nn.Parameter(torch.full((D,), cfg.layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.lambda_1 * self.attn(self.norm1(x))
        return x + self.lambda_2 * self.mlp(self.norm2(x))


class InternVisionTower(nn.Module):
    """pixel_values [B, C, H, W] float (H = W = image_size) -> [B, P, D] (see `forward`)."""

    def __init__(self, cfg: InternVitConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, D))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, cfg.num_positions, D))
        self.layers = nn.ModuleList(InternBlock(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.final_norm else None

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, P, D]: class token + patch embeddings, plus positions."""
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], patches row-major
        cls = self.class_embedding.expand(x.shape[0], -1, -1)  # [B, 1, D]
        return torch.cat([cls, x], dim=1) + self.position_embedding  # [B, P, D]

    def hidden_states(self, pixel_values: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """transformers' `hidden_states` at the given indices: 0 the embeddings, i block i's
        output, negative from the end; never final-normed. Blocks past the deepest are not run."""
        n = self.cfg.num_layers + 1
        if any(not -n <= i < n for i in layers):
            raise ValueError(f"hidden-state index out of range in {list(layers)} (the tower has {n} states)")
        wanted = [i % n for i in layers]
        kept = {0: self.embed(pixel_values)}
        x = kept[0]
        for i in range(1, max(wanted) + 1):
            x = kept[i] = self.layers[i - 1](x)
        return [kept[i] for i in wanted]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """-> [B, P, D], transformers' `last_hidden_state` (final-normed when `final_norm`)."""
        x = self.hidden_states(pixel_values, [-1])[0]
        return x if self.final_norm is None else self.final_norm(x)
