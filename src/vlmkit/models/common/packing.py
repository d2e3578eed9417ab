"""Packed sequences: several variable-length sequences (images of different sizes) as one.

Axes: M sequences, n_i tokens of sequence i, N = sum n_i packed tokens, D width.

A batch of images at their own resolutions gives token sequences of different lengths. Padding
them to the longest wastes compute on the padding (quadratically in attention); packing
concatenates them into one [1, N, D] sequence instead and lets attention see only its own image
through a block-diagonal mask. Worked example, lengths (2, 3) (rows = queries, columns = keys,
1 = may attend):

          a1 a2 b1 b2 b3
      a1 [ 1  1  0  0  0 ]
      a2 [ 1  1  0  0  0 ]
      b1 [ 0  0  1  1  1 ]
      b2 [ 0  0  1  1  1 ]
      b3 [ 0  0  1  1  1 ]

Every other layer of a ViT (norms, MLPs, projections) is per token, so a packed forward equals
encoding the images one at a time, for inference and training alike (the mask is a constant, so
gradients flow through the packed sequence unchanged). transformers' Pixtral builds the same
mask (`generate_block_attention_mask`, an additive float mask with the dtype's minimum); ours is
boolean, which SDPA turns into -inf, and both give the masked keys a weight of exactly 0.

The mask costs N^2 bools (16 images of 1024 patches: 268 MB), and attention under it still
computes all N^2 scores, most of them masked: 16 images of 224 x 224 to 896 x 448 give 4x the
score work of padding every image to the largest. `packed_attention` computes the same result
per sequence instead (what varlen / cu_seqlens kernels do, and transformers' Qwen2-VL SDPA path):
sum n_i^2 scores and no mask, while the per-token layers still run once over the packed [1, N, D].
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def segment_ids(lengths: Sequence[int], device=None) -> torch.Tensor:
    """Which sequence each packed token belongs to: [N] int64, e.g. (2, 3) -> [0, 0, 1, 1, 1]."""
    lengths = torch.as_tensor(list(lengths), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


def block_diagonal_mask(lengths: Sequence[int], device=None) -> torch.Tensor:
    """[1, 1, N, N] bool attention mask, True where query and key are in the same sequence."""
    if any(n <= 0 for n in lengths):
        raise ValueError(f"packed sequences must be non-empty, got lengths {list(lengths)}")
    seg = segment_ids(lengths, device)
    return (seg[:, None] == seg[None, :])[None, None]  # [1, 1, N, N]


def pack(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """M sequences [n_i, D] -> (one packed batch [1, N, D], the lengths n_i)."""
    return torch.cat(list(seqs), dim=0)[None], [s.shape[0] for s in seqs]


def unpack(x: torch.Tensor, lengths: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """A packed [1, N, D] (or [N, D]) -> the M sequences [n_i, D]."""
    return torch.split(x.reshape(-1, x.shape[-1]), list(lengths))


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Sequence[int],
                     scale: float) -> torch.Tensor:
    """Attention of M packed sequences, each only within itself: what `block_diagonal_mask(lengths)`
    gives under SDPA, without the mask or the masked scores.

    Args:
        q, k, v: [B, H, N, hd] with N = sum(lengths) (the heads of a packed [B, N, D]).
        lengths: n_i of each sequence, in packing order.

    Returns:
        [B, H, N, hd].
    """
    if len(lengths) == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    pieces = zip(*(t.split(list(lengths), dim=2) for t in (q, k, v)))  # M x ([B, H, n_i, hd] q, k, v)
    return torch.cat([F.scaled_dot_product_attention(qi, ki, vi, scale=scale) for qi, ki, vi in pieces], dim=2)
