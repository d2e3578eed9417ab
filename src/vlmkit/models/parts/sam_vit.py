"""The SAM ViT image encoder (Segment Anything, arXiv:2304.02643, section 3 and appendix A), as
transformers' SamVisionEncoder: the high-resolution tower of DeepSeek-VL hybrid (SAM-B at 1024 px).

Axes: B batch, g patches per side, D width, H heads, hd head dim, w window side, n windows,
C neck channels.

patch conv -> + absolute positions [1, g, g, D] -> blocks on the [B, g, g, D] grid -> neck.
A block is pre-LN: x + attn(ln1(x)), then x + mlp(ln2(x)) (exact GELU). Its attention runs in
non-overlapping w x w windows (the grid zero-padded at the bottom / right to a multiple of w,
the padding cut off afterwards), except the blocks in `global_attn_indexes`, which attend over the
whole grid. Every attention adds the decomposed relative position bias of MViTv2
(arXiv:2112.01526): for query (i, j) and key (k, l), q . R_h[i - k] + q . R_w[j - l], R_* learned
tables of 2 * side - 1 rows. The neck is conv 1x1 -> LayerNorm over channels -> conv 3x3 ->
LayerNorm over channels, all without biases, giving [B, C, g, g].

Not supported: inputs of another size than `image_size` (the reference resamples the relative
tables then; they are used at their trained size here), dropout.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.models.common.activations import ACTIVATIONS, Activation
from vlmkit.models.common.attention import attend
from vlmkit.models.common.mlp import MLP


@dataclass(kw_only=True)
class SamVisionConfig:
    """transformers' SamVisionConfig fields (defaults: SAM-B at 1024 px, 16-px patches)."""

    hidden_size: int = 768
    output_channels: int = 256
    num_layers: int = 12
    num_heads: int = 12
    image_size: int = 1024
    patch_size: int = 16
    num_channels: int = 3
    mlp_dim: int = 3072
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    hidden_act: Activation = "gelu"

    def __post_init__(self):
        self.global_attn_indexes = tuple(self.global_attn_indexes)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if any(not 0 <= i < self.num_layers for i in self.global_attn_indexes):
            raise ValueError(f"global_attn_indexes {list(self.global_attn_indexes)} out of range for "
                             f"{self.num_layers} layers")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def window(self, layer: int) -> int:
        """The layer's attention window side; 0 = global attention over the whole grid."""
        return 0 if layer in self.global_attn_indexes else self.window_size


def _relative_table(table: torch.Tensor, side: int) -> torch.Tensor:
    """[2 * side - 1, hd] -> [side, side, hd]: entry (q, k) is table[q - k + side - 1]."""
    if table.shape[0] != 2 * side - 1:
        raise ValueError(f"a relative position table of {table.shape[0]} rows does not fit a side of {side}")
    idx = torch.arange(side, device=table.device)
    return table[idx[:, None] - idx[None, :] + side - 1]


class WindowAttention(nn.Module):
    """Multi-head attention over a [B, h, w, D] grid with the decomposed relative position bias."""

    def __init__(self, dim: int, num_heads: int, side: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        hd = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, hd))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, hd))

    def position_bias(self, q: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """q [B, H, h * w, hd] (unscaled) -> additive bias [B, H, h * w, h * w]."""
        B, H, N, hd = q.shape
        grid_q = q.reshape(B * H, h, w, hd)  # [BH, h, w, hd]
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, _relative_table(self.rel_pos_h, h))  # [BH, h, w, h]
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, _relative_table(self.rel_pos_w, w))  # [BH, h, w, w]
        return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, H, N, N)  # key (k, l) row-major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, D = x.shape
        qkv = self.qkv(x).reshape(B, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # [3, B, H, hw, hd]
        q, k, v = qkv.unbind(0)
        out = attend(q, k, v, self.position_bias(q, h, w), q.shape[-1] ** -0.5)  # float bias: added to q.k
        out = out.reshape(B, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(B, h, w, D)
        return self.proj(out)


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, g, g, D] -> [B * n, w, w, D], zero-padding the grid at the bottom / right to a multiple of w."""
    B, gh, gw, D = x.shape
    x = F.pad(x, (0, 0, 0, -gw % w, 0, -gh % w))
    ph, pw = x.shape[1] // w, x.shape[2] // w
    x = x.reshape(B, ph, w, pw, w, D).permute(0, 1, 3, 2, 4, 5)  # [B, ph, pw, w, w, D]
    return x.reshape(-1, w, w, D)


def window_unpartition(windows: torch.Tensor, w: int, gh: int, gw: int) -> torch.Tensor:
    """The inverse of `window_partition`: [B * n, w, w, D] -> [B, gh, gw, D], padding cut off."""
    ph, pw = -(-gh // w), -(-gw // w)
    x = windows.reshape(-1, ph, pw, w, w, windows.shape[-1]).permute(0, 1, 3, 2, 4, 5)  # [B, ph, w, pw, w, D]
    return x.reshape(x.shape[0], ph * w, pw * w, -1)[:, :gh, :gw].contiguous()


class SamBlock(nn.Module):
    """Pre-LN block on the [B, g, g, D] grid, windowed when `window` > 0."""

    def __init__(self, cfg: SamVisionConfig, window: int):
        super().__init__()
        self.window = window
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = WindowAttention(cfg.hidden_size, cfg.num_heads, window or cfg.grid, cfg.qkv_bias)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.mlp_dim, ACTIVATIONS[cfg.hidden_act])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer_norm1(x)
        if self.window:
            h = window_unpartition(self.attn(window_partition(h, self.window)), self.window, x.shape[1], x.shape[2])
        else:
            h = self.attn(h)
        x = x + h
        return x + self.mlp(self.layer_norm2(x))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, h, w] map (SAM's channels_first LayerNorm, eps 1e-6)."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # normalise on a channels-last view


class SamNeck(nn.Module):
    """[B, g, g, D] -> [B, C, g, g]: conv 1x1, channel LN, conv 3x3, channel LN (no biases)."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, channels, kernel_size=1, bias=False)
        self.layer_norm1 = ChannelLayerNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.layer_norm2 = ChannelLayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm1(self.conv1(x.permute(0, 3, 1, 2)))  # [B, C, g, g]
        return self.layer_norm2(self.conv2(x))


class SamVisionEncoder(nn.Module):
    """pixel_values [B, 3, S, S] -> neck output [B, C, g, g] (see `forward`)."""

    def __init__(self, cfg: SamVisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid, cfg.grid, cfg.hidden_size))
        self.layers = nn.ModuleList(SamBlock(cfg, cfg.window(i)) for i in range(cfg.num_layers))
        self.neck = SamNeck(cfg.hidden_size, cfg.output_channels)

    def forward(self, pixel_values: torch.Tensor, keep: int | None = None):
        """-> the neck's [B, C, g, g]; with `keep` = i also the output of block i ([B, g, g, D],
        transformers' `hidden_states[i + 1]`), as a pair."""
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)).permute(0, 2, 3, 1)  # [B, g, g, D]
        x = x + self.pos_embed
        kept = None
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == keep:
                kept = x
        out = self.neck(x)
        return out if keep is None else (out, kept)
