"""2-D rotary position embeddings for vision transformers (patches indexed by row and column).

Axes: N patches (of one image, or of several packed images), hd head dim, F = hd / 4.

Pixtral's axial RoPE-2D (Pixtral 12B, arXiv:2410.07073 sec. 2.1.1; transformers'
PixtralVisionRotaryEmbedding). The 1-D frequencies of a head of width hd,
f_i = theta ** (-2i / hd) for i = 0 .. hd/2 - 1, are split between the two axes: the even ones
f_0, f_2, ... rotate by the patch's row index, the odd ones f_1, f_3, ... by its column index.
The angles of one patch at (row r, column c) are

    angle = [r * f_0, r * f_2, ..., r * f_{hd/2-2},  c * f_1, c * f_3, ..., c * f_{hd/2-1}]   (hd/2)

and each angle turns one pair of channels (j, j + hd/2), the "rotate-half" layout of the
decoders' RoPE (`vlmkit.models.common.rope.apply_rope`, which this module reuses): channel pairs
0 .. F-1 carry the row, F .. 2F-1 the column. Interleaving the frequencies (rather than giving the
row the low half and the column the high half) gives both axes the full range of wavelengths.

The relative property: a rotation by angle a then b is a rotation by a + b, and rotations are
orthogonal, so for a query q at (r1, c1) and a key k at (r2, c2)

    <R(r1, c1) q, R(r2, c2) k> = <q, R(r2 - r1, c2 - c1) k>

depends on the patch positions only through the offset (r2 - r1, c2 - c1): attention sees where a
patch lies relative to another, never the image size, which is what lets one tower read images
of any aspect ratio (tests/unit/test_rope2d.py checks this numerically).

Worked example, hd = 8 (F = 2), theta = 10000: f = [1, 0.1, 0.01, 0.001]; the row takes
[1, 0.01], the column [0.1, 0.001]; the patch at (row 2, column 3) has the angles
[2, 0.02, 0.3, 0.003], and cos / sin are those four repeated twice ([N, 8]).

Angles are computed in float32 and cast to the activation dtype, as in the reference.

Qwen2-VL's vision RoPE (transformers' Qwen2VLVisionRotaryEmbedding) is the same axial layout
with other frequencies: the row and the column each get the full 1-D spectrum of a head of width
hd / 2, g_i = theta ** (-2i / (hd/2)) for i = 0 .. hd/4 - 1, so the angles of a patch at (r, c) are

    angle = [r * g_0, ..., r * g_{F-1},  c * g_0, ..., c * g_{F-1}]   (hd/2)

(`qwen2_vl_inv_freq` returns [g | g], and `axial_rope_cos_sin` serves both models). Its positions
come in spatial-merge order (`merge_order_positions`): the patches of each merge x merge block
are consecutive, because the PatchMerger later concatenates them into one token. The relative
property holds as for Pixtral. Worked example, hd = 8, theta = 10000: g = [1, 0.01]; the patch at
(row 2, column 3) has the angles [2, 0.02, 3, 0.03].
"""

import torch

from vlmkit.models.common.rope import rope_inv_freq


def grid_positions(rows: int, cols: int, device=None) -> torch.Tensor:
    """(row, column) of each patch of a rows x cols grid, row-major: [rows * cols, 2] int64."""
    r = torch.arange(rows, device=device)
    c = torch.arange(cols, device=device)
    rr, cc = torch.meshgrid(r, c, indexing="ij")  # [rows, cols] each
    return torch.stack([rr.flatten(), cc.flatten()], dim=-1)  # [N, 2]


def pixtral_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """The frequencies in Pixtral's order: [f_0, f_2, ... (row) | f_1, f_3, ... (column)], [hd/2] float32."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    f = rope_inv_freq(head_dim, theta)  # [hd/2]
    return torch.cat([f[0::2], f[1::2]])


def axial_rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor,
                         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [N, 2] int (row, column), inv_freq [hd/2] (row half | column half, from
    `pixtral_inv_freq` or `qwen2_vl_inv_freq`) -> (cos, sin), each
    [1, N, hd] in `dtype`, ready for `apply_rope` on q / k [1, H, N, hd]."""
    F = inv_freq.shape[0] // 2
    pos = positions.float()
    rows = pos[:, :1] * inv_freq[:F].float()  # [N, F]
    cols = pos[:, 1:] * inv_freq[F:].float()  # [N, F]
    angles = torch.cat([rows, cols], dim=-1)  # [N, hd/2]
    emb = torch.cat([angles, angles], dim=-1)[None]  # [1, N, hd]: pair (j, j + hd/2) shares an angle
    return emb.cos().to(dtype), emb.sin().to(dtype)


# The Pixtral tower's name for the axial cos / sin.
pixtral_rope_cos_sin = axial_rope_cos_sin


def qwen2_vl_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Qwen2-VL's vision frequencies [g | g], g = theta ** (-2i / (hd/2)): [hd/2] float32."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    g = rope_inv_freq(head_dim // 2, theta)  # [hd/4]
    return torch.cat([g, g])


def merge_order_positions(t: int, rows: int, cols: int, merge: int, device=None) -> torch.Tensor:
    """(row, column) of each patch of a t x rows x cols grid in spatial-merge order: the merge x merge
    blocks row-major, the patches inside a block row-major, the whole repeated per frame t;
    [t * rows * cols, 2] int64 (the order of Qwen2-VL's flattened patches)."""
    if rows % merge or cols % merge:
        raise ValueError(f"a {rows}x{cols} patch grid is not a multiple of the spatial merge {merge}")
    pos = grid_positions(rows, cols, device)  # [rows * cols, 2] row-major
    pos = pos.view(rows // merge, merge, cols // merge, merge, 2)  # [bh, m, bw, m, 2]
    return pos.transpose(1, 2).reshape(-1, 2).repeat(t, 1)  # [t * rows * cols, 2] block-major
