"""SigLIP vision tower (arXiv:2303.15343): a pre-LN ViT, single-device plain PyTorch.

Axes: B batch, N patches, D hidden size, H heads, hd head dim, g patches per side.

Patch conv -> + learned position embeddings -> pre-LN encoder blocks (tanh-GELU MLP) ->
post-LayerNorm -> optionally a multihead attention-pooling (MAP) head. No class token.

Not supported: native-resolution / variable aspect inputs (NaFlex), dropout.
"""

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.models.common.attention import attend
from vlmkit.models.common.mlp import MLP
from vlmkit.models.siglip.config import SiglipVisionConfig


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with biases. x [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        hd = D // self.num_heads
        q = self.q_proj(x).view(B, N, -1, hd).transpose(1, 2)  # [B, H, N, hd]
        k = self.k_proj(x).view(B, N, -1, hd).transpose(1, 2)  # [B, H, N, hd]
        v = self.v_proj(x).view(B, N, -1, hd).transpose(1, 2)  # [B, H, N, hd]
        out = attend(q, k, v, mask, hd**-0.5)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))  # [B, N, D]


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, num_heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class AttentionPoolingHead(nn.Module):
    """MAP head: one learned probe query attends over the tokens, then a residual MLP.

    Uses `nn.MultiheadAttention` because its packed in_proj layout is the published one.
    x [B, N, D] -> [B, D].
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probe = self.probe.expand(x.shape[0], -1, -1)  # [B, 1, D]
        h = self.attention(probe, x, x, need_weights=False)[0]  # [B, 1, D]
        h = h + self.mlp(self.layernorm(h))
        return h[:, 0]


class SiglipVisionTower(nn.Module):
    """pixel_values [B, C, H, W] float -> patch features [B, N, D] (post-LayerNorm)."""

    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.patch_embedding = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Embedding(cfg.num_patches, D)
        self.layers = nn.ModuleList(
            EncoderBlock(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps)
            for _ in range(cfg.num_layers)
        )
        self.post_layernorm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = (
            AttentionPoolingHead(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps)
            if cfg.use_head
            else None
        )

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, D] patch embeddings plus position embeddings."""
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixel_values.to(dtype))  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], patches in row-major order
        return x + self.position_embedding.weight[None]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embed(pixel_values)
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D] from `forward` -> pooled [B, D] through the MAP head."""
        if self.head is None:
            raise ValueError("this SigLIP tower has no attention-pooling head (use_head=False)")
        return self.head(features)


def interpolate_position_embeddings(weight: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resample a [g*g, D] position table to [new_grid**2, D] with bicubic interpolation.

    Used when raising the resolution of a trained tower (PaLI-3 stage 2). Computed in float32 with
    `align_corners=False`, as the reference (transformers' interpolate_pos_encoding) does.
    """
    old = int(round(weight.shape[0] ** 0.5))
    if old * old != weight.shape[0]:
        raise ValueError(f"position table of {weight.shape[0]} rows is not a square grid")
    grid = weight.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)  # [1, D, g, g]
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(weight.dtype)  # [g'*g', D]
