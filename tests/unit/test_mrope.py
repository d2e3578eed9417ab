"""Qwen2-VL's vision RoPE (relative property, worked example, merge order) and M-RoPE for the decoder
(the docstring's worked example, padding, sections, the text-only case equals 1-D RoPE)."""

import pytest
import torch

from vlmkit.models.common.decoder_config import DecoderConfig
from vlmkit.models.common.mrope import IMAGE, TEXT, mrope_cos_sin, mrope_decode_positions, mrope_positions
from vlmkit.models.common.rope import apply_rope, rope_cos_sin, rope_inv_freq
from vlmkit.models.common.rope2d import axial_rope_cos_sin, merge_order_positions, qwen2_vl_inv_freq

HD, THETA = 16, 10000.0


def test_vision_rope_relative_property():
    """Over a whole 4x6 grid (merge order), the rotated q.k of every query / key pair depends only
    on their (row, column) offset: equal offsets give equal scores, and rows differ from columns."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, HD, generator=g, dtype=torch.float64)
    pos = merge_order_positions(1, 4, 6, 2)  # [24, 2]
    cos, sin = axial_rope_cos_sin(pos, qwen2_vl_inv_freq(HD, THETA), torch.float64)
    n = pos.shape[0]
    rq = apply_rope(q.expand(1, 1, n, HD), cos, sin)[0, 0]  # [24, hd]
    rk = apply_rope(k.expand(1, 1, n, HD), cos, sin)[0, 0]
    scores = rq @ rk.T  # [query, key]
    offsets = pos[None, :, :] - pos[:, None, :]  # [query, key, 2]: key - query
    by_offset: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(n):
        for j in range(n):
            by_offset.setdefault(tuple(offsets[i, j].tolist()), []).append(scores[i, j])
    for vals in by_offset.values():
        torch.testing.assert_close(torch.stack(vals), vals[0].expand(len(vals)))
    assert abs(by_offset[(2, 0)][0] - by_offset[(0, 2)][0]) > 1e-3


def test_vision_rope_worked_example():
    """The rope2d docstring's example: hd 8, patch (2, 3) -> angles [2, 0.02, 3, 0.03], twice."""
    inv = qwen2_vl_inv_freq(8, 10000.0)
    torch.testing.assert_close(inv, torch.tensor([1, 0.01, 1, 0.01]))
    cos, sin = axial_rope_cos_sin(torch.tensor([[2, 3]]), inv, torch.float32)
    angles = torch.tensor([2, 0.02, 3, 0.03]).repeat(2)
    torch.testing.assert_close(cos[0, 0], angles.cos())
    torch.testing.assert_close(sin[0, 0], angles.sin())


def test_merge_order_positions():
    """A 2x4 grid with merge 2: two 2x2 blocks, each row-major inside; repeated per frame."""
    pos = merge_order_positions(1, 2, 4, 2).tolist()
    assert pos == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    assert merge_order_positions(2, 2, 4, 2).tolist() == pos * 2
    with pytest.raises(ValueError, match="not a multiple"):
        merge_order_positions(1, 3, 4, 2)


def test_mrope_worked_example():
    """The mrope docstring: "a b <img 2x3> c", then decode continues with the delta."""
    types = torch.tensor([[TEXT, TEXT] + [IMAGE] * 6 + [TEXT]])
    pos, delta = mrope_positions(types, torch.ones_like(types, dtype=torch.bool), torch.tensor([[1, 4, 6]]), 2)
    assert pos[:, 0].tolist() == [[0, 1, 2, 2, 2, 2, 2, 2, 5], [0, 1, 2, 2, 2, 3, 3, 3, 5],
                                  [0, 1, 2, 3, 4, 2, 3, 4, 5]]
    assert delta.tolist() == [[-3]]
    assert mrope_decode_positions(torch.tensor([[9]]), delta).tolist() == [[[6]], [[6]], [[6]]]


def test_mrope_left_padding_and_text_only():
    """Padding gets 0 and is skipped; a text-only row is 0.. on all axes with delta 0; the images
    of the batch are consumed in prompt order across rows."""
    types = torch.tensor([[TEXT, TEXT, IMAGE, IMAGE, TEXT], [TEXT, IMAGE, IMAGE, IMAGE, IMAGE]])
    valid = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    grids = torch.tensor([[1, 2, 4], [1, 4, 4]])
    pos, delta = mrope_positions(types, valid, grids, 2)
    assert pos[:, 0].tolist() == [[0, 0, 1, 1, 3], [0, 0, 1, 1, 3], [0, 0, 1, 2, 3]]
    assert pos[:, 1].tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 2, 2], [0, 1, 2, 1, 2]]
    assert delta.tolist() == [[0], [-2]]
    text, _ = mrope_positions(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool), grids[:0], 2)
    assert text.tolist() == [[[0, 1, 2, 3]]] * 3


def test_mrope_cos_sin_sections_and_text_equals_1d():
    """Equal positions on the three axes give plain RoPE; otherwise section i follows axis i."""
    inv = rope_inv_freq(HD, THETA)
    p = torch.tensor([[0, 3, 7]])
    cos, sin = mrope_cos_sin(p.expand(3, 1, 3), inv, torch.float32, (2, 3, 3))
    ref = rope_cos_sin(p, inv, torch.float32)
    assert torch.equal(cos, ref[0]) and torch.equal(sin, ref[1])
    axes = torch.stack([p, p + 10, p + 20])  # [3, 1, 3]
    cos, _ = mrope_cos_sin(axes, inv, torch.float32, (2, 3, 3))
    for sl, axis in [(slice(0, 2), 0), (slice(2, 5), 1), (slice(5, 8), 2)]:
        want = rope_cos_sin(axes[axis], inv, torch.float32)[0][..., sl]
        assert torch.equal(cos[..., sl], want) and torch.equal(cos[..., 8:][..., sl], want)


def test_mrope_section_must_cover_half_head_dim():
    kw = dict(vocab_size=8, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=1, num_kv_heads=1,
              head_dim=16)
    assert DecoderConfig(**kw, mrope_section=[2, 3, 3]).mrope_section == (2, 3, 3)
    with pytest.raises(ValueError, match="mrope_section"):
        DecoderConfig(**kw, mrope_section=(2, 2, 2))


def test_image_run_must_fit_its_grid():
    types = torch.tensor([[IMAGE] * 3])
    with pytest.raises(ValueError, match="does not fit"):
        mrope_positions(types, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[1, 4, 4]]), 2)
