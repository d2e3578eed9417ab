"""RoPE-2D (Pixtral's axial variant): the relative property, the frequency layout, the worked example."""

import pytest
import torch

from vlmkit.models.common.rope import apply_rope
from vlmkit.models.common.rope2d import grid_positions, pixtral_inv_freq, pixtral_rope_cos_sin

HD, THETA = 16, 10000.0


def _rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [N, hd] at positions [N, 2] -> rotated [N, hd] (float64 in, float64 out)."""
    cos, sin = pixtral_rope_cos_sin(positions, pixtral_inv_freq(HD, THETA), torch.float64)
    return apply_rope(x[None, None], cos, sin)[0, 0]


def _score(q, k, pq, pk):
    return (_rotate(q[None], torch.tensor([pq])) * _rotate(k[None], torch.tensor([pk]))).sum()


def test_relative_property():
    """q.k after rotation depends only on the (row, column) offset between query and key."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, HD, generator=g, dtype=torch.float64)
    for (r1, c1), (r2, c2) in [((0, 0), (3, 5)), ((7, 2), (1, 9)), ((4, 4), (4, 4))]:
        base = _score(q, k, (r1, c1), (r2, c2))
        for dr, dc in [(1, 0), (0, 1), (11, 6), (30, 2)]:
            shifted = _score(q, k, (r1 + dr, c1 + dc), (r2 + dr, c2 + dc))
            torch.testing.assert_close(shifted, base, atol=1e-5, rtol=1e-5)
        # ... and equals the key rotated by the offset alone against the unrotated query
        alone = (q * _rotate(k[None], torch.tensor([[r2 - r1, c2 - c1]]))).sum()
        torch.testing.assert_close(alone, base, atol=1e-5, rtol=1e-5)


def test_both_axes_matter():
    """The same offset on rows and on columns gives different scores: the axes are told apart."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, HD, generator=g, dtype=torch.float64)
    row, col, none = _score(q, k, (0, 0), (3, 0)), _score(q, k, (0, 0), (0, 3)), _score(q, k, (0, 0), (0, 0))
    assert abs(row - col) > 1e-3 and abs(row - none) > 1e-3 and abs(col - none) > 1e-3


def test_worked_example():
    """The docstring's example: hd 8, patch (2, 3) -> angles [2, 0.02, 0.3, 0.003], twice."""
    inv = pixtral_inv_freq(8, 10000.0)
    torch.testing.assert_close(inv, torch.tensor([1, 0.01, 0.1, 0.001]))
    cos, sin = pixtral_rope_cos_sin(torch.tensor([[2, 3]]), inv, torch.float32)
    angles = torch.tensor([2, 0.02, 0.3, 0.003]).repeat(2)
    torch.testing.assert_close(cos[0, 0], angles.cos())
    torch.testing.assert_close(sin[0, 0], angles.sin())


def test_grid_positions_row_major():
    pos = grid_positions(2, 3)
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_head_dim_must_divide_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        pixtral_inv_freq(6, THETA)
