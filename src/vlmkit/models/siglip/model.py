"""SigLIP vision tower (arXiv:2303.15343), and the CLIP ViT (arXiv:2103.00020) through typed
switches of the same tower; single-device plain PyTorch.

Axes: B batch, N patches, P positions (N, or N + 1 with a class token), D hidden size, H heads,
hd head dim, g patches per side.

SigLIP: patch conv -> + learned position embeddings -> pre-LN encoder blocks (tanh-GELU MLP) ->
post-LayerNorm on every token -> optionally a multihead attention-pooling (MAP) head.
CLIP (`class_token`, `pre_norm`, `patch_bias=False`, `hidden_act="quick_gelu"`,
`post_norm="pooled"`): a class token is prepended before the position embeddings (which cover
it), a LayerNorm runs before the first block, and the post-LayerNorm applies only to the pooled
class token, so `forward` returns the last block's output un-normed, as transformers does.

Idefics3 / SmolVLM (`bucket_positions`): images may be padded (`patch_mask` False on padding);
each real patch's position id is its fractional (row, col) in the image's real patch grid
bucketed onto the trained grid x grid table, exactly as transformers' Idefics3VisionEmbeddings,
and padded patches are masked out as keys.

Not supported: NaFlex inputs, position interpolation for other image sizes, dropout.
"""

from collections.abc import Sequence


import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.models.common.attention import attend
from vlmkit.models.common.mlp import MLP, gelu_tanh
from vlmkit.models.common.activations import ACTIVATIONS
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

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float, act=gelu_tanh):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = SelfAttention(dim, num_heads)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D]; mask [B, 1, 1 or N, N] bool (True = may attend) or None."""
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


def encoder_blocks(dim: int, num_heads: int, mlp_dim: int, eps: float, depth: int, act=gelu_tanh) -> nn.ModuleList:
    """`depth` pre-LN EncoderBlocks (a SigLIP tower's `layers`)."""
    return nn.ModuleList(EncoderBlock(dim, num_heads, mlp_dim, eps, act) for _ in range(depth))


class AttentionPoolingHead(nn.Module):
    """MAP head: one learned probe query attends over the tokens, then a residual MLP.

    Uses `nn.MultiheadAttention` because its packed in_proj layout is the published one. It is
    called with the default `need_weights=True`, as transformers calls it: that selects the
    explicit softmax(QK^T)V path, while `need_weights=False` takes the fused SDPA kernel, whose
    other reduction order moved the pooled output by 1.8e-7. x [B, N, D] -> [B, D].
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """key_mask: optional [B, N] bool, False on keys the probe must not read (SigLIP 2's
        padded patches)."""
        return self.pool(x, None if key_mask is None else key_mask[:, None, :])[:, 0]

    def pool(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D], mask [B, Q, N] bool or None -> [B, Q, D] (Q = 1 without a mask).

        Q copies of the probe: query q reads the keys mask[:, q] allows. A packed sequence of Q
        images pools all of them in one call with a block mask (each query its own image).
        The mask is additive, 0 or the dtype's minimum, as transformers builds it for
        nn.MultiheadAttention (which takes a float mask [B * H, Q, N], batch-major).
        """
        Q = 1 if mask is None else mask.shape[1]
        probe = self.probe.expand(x.shape[0], Q, -1)  # [B, Q, D]
        additive = None
        if mask is not None:
            additive = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
            additive = additive.masked_fill(~mask, torch.finfo(x.dtype).min)  # [B, Q, N]
            additive = additive.repeat_interleave(self.attention.num_heads, dim=0)  # [B * H, Q, N]
        h = self.attention(probe, x, x, attn_mask=additive)[0]  # [B, Q, D]
        return h + self.mlp(self.layernorm(h))


class SiglipVisionTower(nn.Module):
    """pixel_values [B, C, H, W] float -> last hidden state [B, P, D] (see `forward`)."""

    def __init__(self, cfg: SiglipVisionConfig):
        super().__init__()
        self.cfg = cfg
        D, act = cfg.hidden_size, ACTIVATIONS[cfg.hidden_act]
        self.class_embedding = nn.Parameter(torch.randn(D)) if cfg.class_token else None
        self.patch_embedding = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size,
                                         bias=cfg.patch_bias)
        self.position_embedding = nn.Embedding(cfg.num_positions, D)
        self.pre_layernorm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.pre_norm else None
        self.layers = encoder_blocks(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps, cfg.num_layers, act)
        self.post_layernorm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = (
            AttentionPoolingHead(D, cfg.num_heads, cfg.intermediate_size, cfg.layer_norm_eps)
            if cfg.use_head
            else None
        )

    def embed(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, H, W] -> [B, P, D]: (class token +) patch embeddings + positions (+ pre-LN).

        patch_mask: [B, H / patch, W / patch] bool, True on real patches (`bucket_positions`
        towers only; default all True).
        """
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixel_values.to(dtype))  # [B, D, gh, gw]
        B, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], patches in row-major order
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, D]
            x = torch.cat([cls, x], dim=1)  # [B, N + 1, D]
        if self.cfg.bucket_positions:
            if patch_mask is None:
                patch_mask = torch.ones(B, gh, gw, dtype=torch.bool, device=x.device)
            x = x + self.position_embedding(bucket_position_ids(patch_mask, self.cfg.grid))
        else:
            x = x + self.position_embedding.weight[None]
        return x if self.pre_layernorm is None else self.pre_layernorm(x)

    def hidden_states(self, pixel_values: torch.Tensor, layers: Sequence[int],
                      patch_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The hidden states transformers' `output_hidden_states` lists, at the given indices.

        Index 0 is the embedding output (after the pre-LN, if any), index i the output of block i,
        negative indices count from the end (-1 = the last block); none is post-LayerNormed.
        Blocks after the deepest requested index are not run. Returns [B, P, D] per index.
        patch_mask: see `embed`; padded patches are then masked out as keys.
        """
        n = self.cfg.num_layers + 1
        if any(not -n <= i < n for i in layers):
            raise ValueError(f"hidden-state index out of range in {list(layers)} (the tower has {n} states)")
        wanted = [i % n for i in layers]
        x = self.embed(pixel_values, patch_mask)
        kept = {0: x}
        # As transformers, no mask at all unless some patch of the batch is padding.
        mask = None if patch_mask is None or bool(patch_mask.all()) else patch_mask.flatten(1)[:, None, None, :]
        for i, layer in enumerate(self.layers[: max(wanted)], start=1):
            x = layer(x, mask)
            if i in wanted:
                kept[i] = x
        return [kept[i] for i in wanted]

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """-> [B, P, D], transformers' `last_hidden_state`: post-LayerNormed for SigLIP
        (`post_norm="tokens"`), the last block's raw output for CLIP (`post_norm="pooled"`).
        patch_mask: see `embed`."""
        x = self.hidden_states(pixel_values, [-1], patch_mask)[0]
        return self.post_layernorm(x) if self.cfg.post_norm == "tokens" else x

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, P, D] from `forward` -> pooled [B, D]: the MAP head's output, or the
        post-LayerNormed class token (CLIP's `pooler_output`)."""
        if self.head is not None:
            return self.head(features)
        if self.cfg.class_token:
            return self.post_layernorm(features[:, 0])
        raise ValueError("this SigLIP tower has no attention-pooling head (use_head=False)")


def bucket_position_ids(patch_mask: torch.Tensor, grid: int) -> torch.Tensor:
    """patch_mask [B, h, w] bool (True = real patch; real patches form a top-left block) ->
    position ids [B, h * w] int64 into a grid x grid table; padded patches get 0.

    Patch (r, c) of an image with R x C real patches sits at (r / R, c / C) in [0, 1)^2; each
    coordinate is bucketed by the boundaries 1/grid, 2/grid, ... (float32, as transformers'
    Idefics3VisionEmbeddings computes them, so ids match it exactly: a full grid x grid image
    gets 0 .. grid^2 - 1 in order).
    """
    B, h, w = patch_mask.shape
    device = patch_mask.device
    boundaries = torch.arange(1 / grid, 1.0, 1 / grid, device=device)  # [grid - 1]
    rows, cols = patch_mask[:, :, 0].sum(dim=1), patch_mask[:, 0, :].sum(dim=1)  # [B]
    frac_r = torch.arange(h, device=device, dtype=torch.float32)[None] * (1.0 / rows)[:, None]  # [B, h]
    frac_c = torch.arange(w, device=device, dtype=torch.float32)[None] * (1.0 / cols)[:, None]  # [B, w]
    bucket_r = torch.bucketize(frac_r.clamp(max=1.0 - 1e-6), boundaries, right=True)
    bucket_c = torch.bucketize(frac_c.clamp(max=1.0 - 1e-6), boundaries, right=True)
    ids = (bucket_r[:, :, None] * grid + bucket_c[:, None, :]).reshape(B, h * w)  # [B, h * w]
    return ids.masked_fill(~patch_mask.reshape(B, h * w), 0)


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
