"""Multimodal RoPE (M-RoPE, Qwen2-VL arXiv:2409.12191 sec. 2.1) for the shared decoder.

Axes: B batch, T tokens, hd head dim, n images, A = 3 position axes (temporal, height, width).

Every token has three positions instead of one: text tokens carry the same index on all three
axes (so a text-only prompt is plain 1-D RoPE), the tokens of an image carry (t, row, column) of
their merged patch, offset by the position where the image starts. The hd/2 rotary frequencies
are cut into `mrope_section` = (s_t, s_h, s_w) consecutive pieces (s_t + s_h + s_w = hd / 2):
the first s_t frequencies turn by the temporal position, the next s_h by the height, the last s_w
by the width (transformers' Qwen2VLRotaryEmbedding.recomposition_frequencies). The text after an
image continues from max(position in the image) + 1, i.e. an image of h x w merged tokens
advances the position by max(h, w), not by h * w.

Worked example (merge 2, one 4x6-patch image -> 2x3 merged tokens, prompt "a b <img> c"):
    tokens    a  b  i0 i1 i2 i3 i4 i5  c
    temporal  0  1  2  2  2  2  2  2   5
    height    0  1  2  2  2  3  3  3   5
    width     0  1  2  3  4  2  3  4   5
and the rope delta (max position + 1 - length) is 6 - 9 = -3: decode step k (0-based position
9 + k in the sequence) gets the position 9 + k - 3 on all three axes.

With left padding the positions count only real tokens (padding gets 0), as the reference's
`get_rope_index` does with an attention mask.

Videos (token type 2) take their grids from their own list, in prompt order. Their temporal
position advances by an interval per temporal patch: 1 in Qwen2-VL; in Qwen2.5-VL
tokens_per_second * second_per_grid_ts (the seconds one temporal patch spans, Tp / fps), so that
the temporal axis measures absolute time: temporal patch k sits at start + floor(k * interval)
(the product in float32, truncated, as the reference computes it). E.g. 2 frames per patch at
fps 2 (1 s per patch) and 2 tokens per second: temporal positions start + 0, 2, 4, ... The
height / width axes and the text after the video are as for an image (the text continues from
start + max(h, w) / merge, whatever the temporal extent).
"""

import torch

from vlmkit.models.common.rope import angles_cos_sin

TEXT, IMAGE, VIDEO = 0, 1, 2  # token types, transformers' mm_token_type_ids convention


def mrope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype,
                  section: tuple[int, int, int], scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [3, B, T] int -> (cos, sin), each [B, T, hd] in `dtype`, frequency piece i of
    `section` turned by axis i."""
    freqs = positions[..., None].float() * inv_freq.float()  # [3, B, T, hd/2]
    pieces = freqs.split(list(section), dim=-1)
    angles = torch.cat([p[i] for i, p in enumerate(pieces)], dim=-1)  # [B, T, hd/2]
    return angles_cos_sin(angles, dtype, scale)


def _image_positions(start: int, grid: tuple[int, int, int], merge: int,
                     interval: torch.Tensor | int = 1) -> torch.Tensor:
    """The [3, t * h/merge * w/merge] positions of one image (or video) starting at `start`;
    temporal patch k at start + floor(k * interval)."""
    t, h, w = grid[0], grid[1] // merge, grid[2] // merge
    temporal = (torch.arange(t) * interval).long()
    tt, hh, ww = torch.meshgrid(temporal, torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def _runs(types: list[int]) -> list[tuple[int, int]]:
    """(token type, run length) of the maximal runs of equal types."""
    runs: list[tuple[int, int]] = []
    for ty in types:
        if runs and runs[-1][0] == ty:
            runs[-1] = (ty, runs[-1][1] + 1)
        else:
            runs.append((ty, 1))
    return runs


def mrope_positions(token_types: torch.Tensor, key_valid: torch.Tensor, grids: torch.Tensor, merge: int,
                    video_grids: torch.Tensor | None = None,
                    video_intervals: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions of a (left- or right-padded) prompt batch, as transformers' get_rope_index.

    Args:
        token_types: [B, T] int, 0 text / 1 image / 2 video per token (mm_token_type_ids).
        key_valid: [B, T] bool, False at padding.
        grids: [n, 3] int (t, h, w) patch grids of the prompt's images in prompt order.
        merge: the vision tower's spatial merge size.
        video_grids: [v, 3] int grids of the prompt's videos in prompt order.
        video_intervals: [v] float32, each video's temporal step per temporal patch (None: 1).

    Returns:
        positions [3, B, T] int64 (0 at padding), deltas [B, 1] int64: max position + 1 - the
        number of real tokens, which decode adds to the token's sequence index.
    """
    B, T = token_types.shape
    positions = torch.zeros(3, B, T, dtype=torch.long)
    next_grid = {IMAGE: iter(grids.tolist()),
                 VIDEO: iter(video_grids.tolist() if video_grids is not None else [])}
    n_videos = 0 if video_grids is None else len(video_grids)
    intervals = iter(video_intervals if video_intervals is not None else [1] * n_videos)
    deltas = []
    for b in range(B):
        valid = key_valid[b].cpu().bool()
        parts, cur = [], 0
        for ty, n in _runs(token_types[b].cpu()[valid].tolist()):
            if ty == TEXT:
                parts.append(torch.arange(n).expand(3, n) + cur)
                cur += n
                continue
            grid = next(next_grid[ty], None)
            if grid is None:
                raise ValueError(f"more {'video' if ty == VIDEO else 'image'} token runs than grids")
            parts.append(_image_positions(cur, grid, merge, next(intervals) if ty == VIDEO else 1))
            if parts[-1].shape[1] != n:
                raise ValueError(f"an image run of {n} tokens does not fit its grid {grid} with merge {merge}")
            cur += max(grid[1], grid[2]) // merge
        row = torch.cat(parts, dim=1) if parts else torch.zeros(3, 0, dtype=torch.long)
        positions[:, b, valid] = row
        deltas.append(int(row.max()) + 1 - row.shape[1] if row.numel() else 0)
    return positions.to(token_types.device), torch.tensor(deltas, device=token_types.device)[:, None]


def mrope_decode_positions(seq_index: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """seq_index [B, T] int (the tokens' 0-based index among the sequence's real tokens), deltas
    [B, 1] from `mrope_positions` -> [3, B, T]: text after the prompt moves on all axes together."""
    return (seq_index + deltas).expand(3, *seq_index.shape)
