"""Mistral 3's patch merger: RMSNorm, then each s x s block of an image's patch grid -> one token.

Axes: M images, h_i x w_i patch grid of image i, N = sum h_i w_i packed patches, s merge size,
N' = sum (h_i / s)(w_i / s) merged tokens, Dv vision width.

transformers' Mistral3MultiModalProjector runs `norm -> patch_merger -> linear_1 -> act ->
linear_2`; this part is the first two steps (the last three are `models.parts.connectors.Connector`
with two layers, reused):

    x = RMSNorm(x)                                    [N, Dv], eps = the text config's rms_norm_eps
    per image: its h x w grid -> (h/s) x (w/s) blocks of s x s patches, row-major
               block channels in the order (channel, row in block, column in block)
    x = merging_layer(x)                              [N', Dv s^2] -> [N', Dv], no bias

The channel order is `torch.nn.functional.unfold`'s (what transformers calls), channel-major,
unlike pixel shuffle's (row, column, channel) in connectors.py: the merging layer's weight
columns are laid out for it, so the two are not interchangeable. Unlike pixel shuffle the grid
is per image and need not be square; the processor resizes images to multiples of
patch * s, and a remainder row / column would be dropped (as unfold drops it).
"""

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.models.common.norms import RMSNorm


@dataclass(kw_only=True)
class PatchMergerConfig:
    # Each s x s block of patches becomes one token (Mistral 3: 2).
    spatial_merge_size: int = 2
    # transformers reads the text config's rms_norm_eps for this vision-width norm.
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.spatial_merge_size < 1:
            raise ValueError(f"spatial_merge_size must be >= 1, got {self.spatial_merge_size}")

    def num_tokens(self, grid: tuple[int, int]) -> int:
        """Merged tokens of one (h, w) patch grid."""
        s = self.spatial_merge_size
        return (grid[0] // s) * (grid[1] // s)


def merge_blocks(grid: torch.Tensor, s: int) -> torch.Tensor:
    """One image's patches [h, w, Dv] -> [(h/s)(w/s), Dv s^2] in unfold's layout: token (r, c)
    holds channel d of patch (s r + i, s c + j) at index (d s + i) s + j."""
    h, w, Dv = grid.shape
    grid = grid[: h - h % s, : w - w % s]  # unfold drops a remainder row / column
    blocks = grid.reshape(h // s, s, w // s, s, Dv)  # [h/s, i, w/s, j, Dv]
    blocks = blocks.permute(0, 2, 4, 1, 3)  # [h/s, w/s, Dv, i, j]
    return blocks.reshape((h // s) * (w // s), Dv * s * s)  # [(h/s)(w/s), Dv s^2]


class PatchMerger(nn.Module):
    """packed patch features [1, N, Dv] (or [N, Dv]) + each image's (h_i, w_i) grid -> [N', Dv]."""

    def __init__(self, cfg: PatchMergerConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        # Llama's RMSNorm (transformers' Mistral3RMSNorm): normalise in float32, cast, then scale.
        self.norm = RMSNorm(dim, eps=cfg.norm_eps, unit_offset=False, scale_in_fp32=False)
        s = cfg.spatial_merge_size
        self.merging_layer = nn.Linear(dim * s * s, dim, bias=False)

    def forward(self, x: torch.Tensor, grids: list[tuple[int, int]]) -> torch.Tensor:
        x = self.norm(x.reshape(-1, x.shape[-1]))  # [N, Dv]
        n = [h * w for h, w in grids]
        if sum(n) != x.shape[0]:
            raise ValueError(f"{x.shape[0]} patch features but the image grids {grids} hold {sum(n)}")
        s = self.cfg.spatial_merge_size
        merged = [merge_blocks(xi.reshape(h, w, -1), s) for xi, (h, w) in zip(x.split(n), grids)]
        return self.merging_layer(torch.cat(merged))  # [N', Dv]
