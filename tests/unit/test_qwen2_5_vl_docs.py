"""The worked examples of docs/qwen2_5_vl.md: the window order of a 4 x 6 merged grid, the window
sizes of a 3 x 5 one, and a video's absolute-time temporal positions."""

import torch

from vlmkit.models.common.mrope import TEXT, VIDEO, mrope_positions
from vlmkit.models.parts.qwen2_vit import window_order


def test_window_order_example():
    order, lengths = window_order([[1, 8, 12]], merge=2, window=2)
    assert order.tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11, 12, 13, 18, 19, 14, 15, 20, 21, 16, 17, 22, 23]
    assert lengths == [16] * 6
    _, lengths = window_order([[1, 6, 10]], merge=2, window=2)
    assert [n // 4 for n in lengths] == [4, 4, 2, 2, 2, 1]


def test_video_time_positions_example():
    """2 tokens per second, 3 fps, Tp 2: steps of 4/3 -> temporal 0, 1, 2, 4, 5 after the start."""
    types = torch.tensor([[TEXT] + [VIDEO] * 5 + [TEXT]])  # a 5 x 1 x 1 merged video (grid 5 x 2 x 2)
    interval = 2 * torch.tensor([2 / 3], dtype=torch.float32)
    pos, _ = mrope_positions(types, torch.ones_like(types, dtype=torch.bool), torch.zeros(0, 3, dtype=torch.long), 2,
                             torch.tensor([[5, 2, 2]]), interval)
    assert pos[0, 0, 1:6].tolist() == [1 + t for t in (0, 1, 2, 4, 5)]
    assert pos[:, 0, 6].tolist() == [2, 2, 2]  # text continues at start + max(h, w) / merge
    plain, _ = mrope_positions(types, torch.ones_like(types, dtype=torch.bool), torch.zeros(0, 3, dtype=torch.long), 2,
                               torch.tensor([[5, 2, 2]]))
    assert plain[0, 0, 1:6].tolist() == [1, 2, 3, 4, 5]  # Qwen2-VL: one step per temporal patch
