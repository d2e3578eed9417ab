"""Qwen2-VL's native-resolution vision tower (arXiv:2409.12191 sec. 2.1), as transformers'
Qwen2VisionTransformerPretrainedModel computes it, and Qwen2.5-VL's (arXiv:2502.13923 sec. 2.1.1,
transformers' Qwen2_5_VisionTransformerPretrainedModel) through typed switches; single-device
plain PyTorch.

Axes: M images (or videos), (t_i, h_i, w_i) patch grid of image i, N = sum t_i h_i w_i packed
patches, C channels, Tp temporal patch, P patch, D tower width (embed_dim), H heads, hd head
dim, m spatial merge, Do output width (the decoder's hidden size).

Input is what the processor gives (vlmkit.data.processors / transformers' Qwen2VLImageProcessor):
`pixel_values` [N, C * Tp * P * P], the patches of all images already flattened, in spatial-merge
order (the m x m patches of one merged token consecutive), and `grid_thw` [M, 3]. A still image
is repeated Tp times, so a frame pair is one patch.

    patch embed (a Conv3d with kernel = stride = (Tp, P, P), no bias: a linear map of each
    flattened patch, run as the conv over rows of patches) -> depth x [x + attn(LN(x));
    x + fc2(act(fc1(LN(x))))] -> PatchMerger: LN, then the m*m consecutive patches of a merged
    token concatenated [N/m^2, m^2 D] -> Linear -> GELU -> Linear -> [N/m^2, Do].

Attention has q/k/v biases (one fused `qkv`), Qwen2-VL's vision RoPE on q and k
(models/common/rope2d: rows and columns each over the full spectrum of hd/2, positions in merge
order) and is packed: all images form one [1, N, D] sequence that attends block-diagonally over
the frames (segments of h_i * w_i patches per frame, the reference's cu_seqlens), so the packed
forward equals encoding each image alone and nothing is padded. Each segment is one unmasked
attention call, as in the reference's non-flash path: equal to a block-diagonal mask
(models/common/packing), with the reference's summation order, so bf16 outputs are bit-equal
too, and no N x N mask is built. RoPE runs in float32 and is cast back, as in the reference.

Qwen2.5-VL's switches (`norm`, `gated_mlp`, `intermediate_size`, `window_size`,
`fullatt_block_indexes`): RMSNorm instead of LayerNorm (blocks and merger, Llama's form: cast,
then scale), a SwiGLU MLP with biases (gate/up/down) instead of fc1/fc2, and window attention:
every block not in `fullatt_block_indexes` attends only within a window of
w = window_size / (P m) merged tokens per side (112 px / (14 px * 2) = 4 x 4 merged tokens =
8 x 8 patches). The windows of a frame tile its merged grid from the top-left; the last row /
column of windows may be smaller. The patches are permuted once so that each window's patches
are consecutive (`window_order`: windows row-major, their merged tokens row-major, each token's
m*m patches kept together), which makes each window one segment (the reference's
`cu_window_seqlens` are their cumulative lengths); the full-attention blocks keep the per-frame
segments, still consecutive since a frame's patches stay within the frame's span. After the last
block the patches are put back in input order, so `encode` and the merger see the input order
(transformers' `last_hidden_state` stays in window order; its merged tokens are un-permuted).
Worked example, a 1 x 8 x 12 patch grid, m = 2 (4 x 6 merged tokens), w = 2: windows of 2 x 2
merged tokens, 2 rows x 3 columns of windows, each of 4 merged tokens = 16 patches; merged token
order 0 1 6 7 | 2 3 8 9 | 4 5 10 11 | 12 13 18 19 | ...

Not supported: dropout; varlen (flash) kernels.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vlmkit.models.common.activations import ACTIVATIONS, Activation
from vlmkit.models.common.attention import attend
from vlmkit.models.common.mlp import MLP, GatedMLP
from vlmkit.models.common.norms import RMSNorm
from vlmkit.models.common.rope2d import axial_rope_cos_sin, merge_order_positions, qwen2_vl_inv_freq

_LN_EPS = 1e-6  # hard-coded in the reference's blocks and merger


@dataclass(kw_only=True)
class Qwen2VitConfig:
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: int = 4  # transformers types it int
    hidden_act: Activation = "quick_gelu"
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    # The merger's output width: the decoder's hidden size.
    hidden_size: int = 1536
    rope_theta: float = 10000.0
    # The MLP width; None: embed_dim * mlp_ratio (Qwen2-VL). Qwen2.5-VL: 3420 for a 1280 tower.
    intermediate_size: int | None = None
    # "rmsnorm" (Qwen2.5-VL) in the blocks and the merger, else LayerNorm; eps 1e-6 either way.
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # SwiGLU-style gate/up/down projections with biases (Qwen2.5-VL) instead of fc1 / fc2.
    gated_mlp: bool = False
    # Window side in pixels (Qwen2.5-VL: 112); None: every block attends over its whole frame.
    window_size: int | None = None
    # Blocks that attend over the whole frame when window_size is set (Qwen2.5-VL: 7, 15, 23, 31).
    fullatt_block_indexes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"Qwen2-VL's 2-D RoPE needs a head dim divisible by 4, got {self.head_dim}")
        self.fullatt_block_indexes = tuple(self.fullatt_block_indexes)
        if self.window_size is not None and self.merged_window < 1:
            raise ValueError(f"window_size {self.window_size} is smaller than one merged token "
                             f"({self.patch_size * self.spatial_merge_size} px)")
        if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes {self.fullatt_block_indexes} outside the {self.depth} blocks")

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size or int(self.embed_dim * self.mlp_ratio)

    @property
    def merged_window(self) -> int:
        """Window side in merged tokens (the reference floors window_size / (P m))."""
        return (self.window_size or 0) // self.spatial_merge_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per flattened patch: C * Tp * P * P."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


class PatchEmbed(nn.Module):
    """Flattened patches [N, C*Tp*P*P] -> [N, D]; the weight is kept in the Conv3d layout (HF's)."""

    # Patches laid side by side per row of the conv's input (see forward); 64 was the fastest of
    # 16..1024 at the benchmark's width; every length gives the same bits in fp32.
    row = 64

    def __init__(self, cfg: Qwen2VitConfig):
        super().__init__()
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.embed_dim, kernel_size=k, stride=k, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The reference runs the Conv3d (kernel = stride) on N separate kernel-sized volumes: one
        # output point per volume, which oneDNN computes ~10x slower than the same conv over wide
        # inputs. So the patches are laid side by side, `row` per volume [B, C, Tp, P, row * P],
        # zero-padded to whole rows: the same per-output summation, bit-equal to the reference in
        # fp32 (tests/unit/test_qwen2_vit.py, 96 weight/size draws). In bf16 oneDNN's per-patch
        # call rounds a few outputs one bf16 step apart for some weights (2 of 48 draws at width
        # 1280, 14 of 48 at width 48), never more. A GEMM on the flattened patches is faster
        # still but sums in another order (7.6e-6 apart in fp32).
        w = self.proj.weight  # [D, C, Tp, P, P]
        D, C, Tp, P, _ = w.shape
        N, L = x.shape[0], self.row
        B = -(-N // L)
        x = nn.functional.pad(x.to(w.dtype), (0, 0, 0, B * L - N))  # [B L, C Tp P P]
        x = x.view(B, L, C, Tp, P, P).permute(0, 2, 3, 4, 1, 5).reshape(B, C, Tp, P, L * P)
        out = self.proj(x)  # [B, D, 1, 1, L]
        return out.view(B, D, L).transpose(1, 2).reshape(B * L, D)[:N]  # [N, D]


def rope_in_float32(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope(x.float(), cos, sin).to(x.dtype)` bit for bit (the reference rotates in float32
    and casts back), in half the passes over x: x [..., B, H, N, hd] in any float dtype, cos / sin
    [B, N, hd] float32 -> [..., B, H, N, hd] in x's dtype.

    Rotate-half by halves, x = [x1 | x2]: [x1 c1 - x2 s1 | x2 c2 + x1 s2], the same products and
    sums as x * cos + [-x2 | x1] * sin (negating a product is exact), without the float32 copy of
    x (a bf16 x times a float32 table is computed in float32) or the rotated copy.
    """
    h = x.shape[-1] // 2
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, N, hd]: broadcast over heads
    x1, x2 = x[..., :h], x[..., h:]
    first = x1 * cos[..., :h] - x2 * sin[..., :h]
    second = x2 * cos[..., h:] + x1 * sin[..., h:]
    return torch.cat([first.to(x.dtype), second.to(x.dtype)], dim=-1)


class VisionAttention(nn.Module):
    """Packed multi-head attention, fused qkv with biases, vision RoPE. x [1, N, D] -> [1, N, D]."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, N, D] -> q, k, v [B, H, N, hd], RoPE applied to q and k (in float32)."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # [3, B, H, N, hd]
        q, k = rope_in_float32(qkv[:2], cos, sin)  # q and k in one pass each
        return q, k, qkv[2]

    def forward(self, x, cos, sin, segments: list[int]):
        B, N, D = x.shape
        hd = D // self.num_heads
        q, k, v = self.project(x, cos, sin)
        # One unmasked attention per segment (frame or window) = a block-diagonal mask over the
        # packed sequence, summed in the reference's order (its non-flash path splits the same
        # way), so bf16 outputs round alike; and no N x N mask is built.
        parts = zip(*(t.split(segments, dim=2) for t in (q, k, v)))
        # Joined along the sequence in [B, N, H, hd] order: one copy, and the view to D is free.
        out = torch.cat([attend(qi, ki, vi, None, hd**-0.5).transpose(1, 2) for qi, ki, vi in parts], dim=1)
        return self.proj(out.view(B, N, D))


def _norm(cfg: Qwen2VitConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":  # transformers' Qwen2_5_VLRMSNorm is Llama's: cast, then scale
        return RMSNorm(cfg.embed_dim, eps=_LN_EPS, unit_offset=False, scale_in_fp32=False)
    return nn.LayerNorm(cfg.embed_dim, eps=_LN_EPS)


class Qwen2VisionBlock(nn.Module):
    def __init__(self, cfg: Qwen2VitConfig):
        super().__init__()
        D = cfg.embed_dim
        self.norm1, self.norm2 = _norm(cfg), _norm(cfg)
        self.attn = VisionAttention(D, cfg.num_heads)
        if cfg.gated_mlp:
            self.mlp = GatedMLP(D, cfg.mlp_width, cfg.hidden_act, bias=True)
        else:
            self.mlp = MLP(D, cfg.mlp_width, ACTIVATIONS[cfg.hidden_act])

    def forward(self, x, cos, sin, segments: list[int]):
        """x [1, N, D]; cos / sin [1, N, hd] float32; segments: lengths of the consecutive runs of
        patches that attend among themselves (frames or windows), summing to N."""
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """[N, D] in merge order -> [N / m^2, Do]: each m x m block of patches becomes one token."""

    def __init__(self, cfg: Qwen2VitConfig):
        super().__init__()
        wide = cfg.embed_dim * cfg.spatial_merge_size**2
        self.ln_q = _norm(cfg)
        self.mlp = nn.Sequential(nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.mlp[0].in_features
        return self.mlp(self.ln_q(x).reshape(-1, wide))  # [N / m^2, m^2 D] -> [N / m^2, Do]


def window_order(grids: list[list[int]], merge: int, window: int) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL's window partition of packed frames (the reference's get_vision_window_index).

    grids: (t, h, w) patch grids; window: the window side in merged tokens.
    Returns (order [N / m^2] int64, lengths): merged token `order[j]` (input order) goes to slot j,
    frame by frame, windows row-major, tokens row-major inside a window; `lengths` are the patches
    per window (m^2 per merged token), in that order.
    """
    order, lengths, offset = [], [], 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        per_row = math.ceil(gw / window)  # windows per row of windows; the last may be narrower
        wid = (torch.arange(gh)[:, None] // window) * per_row + torch.arange(gw)[None, :] // window  # [gh, gw]
        wid = wid.flatten()
        frame = torch.argsort(wid, stable=True)  # [gh gw]: window-major, row-major inside
        counts = torch.bincount(wid).tolist()  # every window holds >= 1 token (ceil tiling)
        for _ in range(t):
            order.append(frame + offset)
            lengths += [c * merge * merge for c in counts]
            offset += gh * gw
    return torch.cat(order), lengths


def _patch_order(token_order: torch.Tensor, merge: int) -> torch.Tensor:
    """Merged-token permutation [N / m^2] -> patch permutation [N]: a token's m^2 patches stay together."""
    unit = merge * merge
    return (token_order[:, None] * unit + torch.arange(unit)).flatten()


class Qwen2VisionTower(nn.Module):
    """Flattened patches of images of any sizes + their grids -> merged tokens [N / m^2, Do]."""

    def __init__(self, cfg: Qwen2VitConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Qwen2VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)

    def _check(self, pixel_values: torch.Tensor, grids: list[list[int]]) -> None:
        n = sum(t * h * w for t, h, w in grids)
        if pixel_values.dim() != 2 or pixel_values.shape != (n, self.cfg.patch_dim):
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)} do not match grid_thw {grids} "
                             f"([{n}, {self.cfg.patch_dim}] expected)")

    def encode(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, C*Tp*P*P], grid_thw [M, 3] -> the last block's output [N, D] (before
        the merger; transformers' `last_hidden_state`), patches in the input's order."""
        grids = grid_thw.tolist()
        self._check(pixel_values, grids)
        cfg, m = self.cfg, self.cfg.spatial_merge_size
        x = self.patch_embed(pixel_values)  # [N, D]
        positions = torch.cat([merge_order_positions(t, h, w, m, x.device) for t, h, w in grids])  # [N, 2]
        full = [h * w for t, h, w in grids for _ in range(t)]  # one segment per frame
        segments = [full] * cfg.depth
        if cfg.window_size is not None:
            token_order, lengths = window_order(grids, m, cfg.merged_window)
            perm = _patch_order(token_order, m).to(x.device)
            x, positions = x[perm], positions[perm]  # windows consecutive
            segments = [full if i in cfg.fullatt_block_indexes else lengths for i in range(cfg.depth)]
        # Frequencies per call, no buffer: casting the model can never round them.
        inv_freq = qwen2_vl_inv_freq(cfg.head_dim, cfg.rope_theta).to(x.device)
        cos, sin = axial_rope_cos_sin(positions, inv_freq, torch.float32)  # [1, N, hd] each
        x = x[None]  # [1, N, D]
        for block, seg in zip(self.blocks, segments):
            x = block(x, cos, sin, seg)
        if cfg.window_size is not None:
            x = x[:, torch.argsort(perm)]  # back to the input order
        return x[0]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """-> merged image tokens [sum t_i h_i w_i / m^2, Do], images in order."""
        return self.merger(self.encode(pixel_values, grid_thw))

    def num_tokens(self, grid_thw: torch.Tensor) -> list[int]:
        """Decoder tokens per image: t * h * w / m^2."""
        return [t * h * w // self.cfg.spatial_merge_size**2 for t, h, w in grid_thw.tolist()]
