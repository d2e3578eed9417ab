"""`attend` with grouped KV heads: query head h reads KV head h // (H / K), on both of its paths
(SDPA with enable_gqa when there is no soft-cap, the spelled-out path with Gemma 2's soft-cap).

The parity models have one KV head (Gemma 1 debug, where any grouping is the same) or soft-capped
attention (Gemma 2), so a wrong head grouping on the SDPA path would pass them; this checks it
against attention written out head by head.
"""

import pytest
import torch

from vlmkit.models.common.attention import attend


def reference(q, k, v, mask, scale, softcap):
    """Per query head h: softmax(cap(q_h k_g^T * scale) masked) v_g with g = h // (H / K)."""
    n_rep = q.shape[1] // k.shape[1]
    heads = []
    for h in range(q.shape[1]):
        g = h // n_rep
        scores = q[:, h] @ k[:, g].transpose(-1, -2) * scale  # [B, T, S]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~mask[:, 0], float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, g])  # [B, T, hd]
    return torch.stack(heads, dim=1)  # [B, H, T, hd]


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("kv_heads", [1, 2, 3])
def test_grouped_heads_read_their_own_kv_head(softcap, kv_heads):
    g = torch.Generator().manual_seed(kv_heads)
    B, H, T, S, hd = 2, 6, 3, 7, 8
    q = torch.randn(B, H, T, hd, generator=g)
    k, v = torch.randn(B, kv_heads, S, hd, generator=g), torch.randn(B, kv_heads, S, hd, generator=g)
    mask = torch.rand(B, 1, T, S, generator=g) > 0.3
    mask[..., 0] = True  # every query sees at least one key
    out = attend(q, k, v, mask, scale=hd**-0.5, softcap=softcap)
    torch.testing.assert_close(out, reference(q, k, v, mask, hd**-0.5, softcap), rtol=1e-5, atol=1e-5)
