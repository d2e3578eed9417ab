"""Attention kernels and masks shared by the encoder (SigLIP) and decoder (Gemma) families.

Masks are boolean, True where a query may attend to a key, shaped [B, 1, T, S] (T queries,
S keys) so that they broadcast over heads.

The prefix-LM mask (PaliGemma, big_vision's "prefix-LM" / HF's token_type_ids) lets image and
prefix tokens attend to each other in both directions, while suffix tokens (the answer) attend
causally. Worked example, two image tokens i1 i2, a prefix "p1 p2", a suffix "s1 s2"
(rows = queries, columns = keys, 1 = may attend):

           i1 i2 p1 p2 s1 s2
      i1 [  1  1  1  1  0  0 ]
      i2 [  1  1  1  1  0  0 ]
      p1 [  1  1  1  1  0  0 ]
      p2 [  1  1  1  1  0  0 ]
      s1 [  1  1  1  1  1  0 ]
      s2 [  1  1  1  1  1  1 ]

Left padding adds columns that nobody attends to (and rows whose outputs are never used).
"""

import torch
import torch.nn.functional as F


def prefix_lm_mask(
    key_valid: torch.Tensor,
    in_prefix: torch.Tensor,
    query_index: torch.Tensor,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Build the boolean attention mask for a (possibly cached) decoder step.

    Args:
        key_valid: [B, S] bool, False at padding slots (and at cache slots not yet written).
        in_prefix: [B, S] bool, True for image/prefix tokens (attend bidirectionally among
            themselves); all False gives a plain causal mask.
        query_index: [T] int64, the slot index of each query in the key axis.
        sliding_window: if set, causal attention sees only the last `sliding_window` slots
            (Gemma 2 local layers); the bidirectional prefix block is not windowed, as in the
            reference.

    Returns:
        [B, 1, T, S] bool mask. Rows with no allowed key (padding queries) are opened fully so
        that softmax stays finite; their outputs are never used.
    """
    S = key_valid.shape[1]
    key_index = torch.arange(S, device=key_valid.device)
    causal = key_index[None, :] <= query_index[:, None]  # [T, S]
    if sliding_window is not None:
        causal = causal & (key_index[None, :] > query_index[:, None] - sliding_window)
    q_prefix = in_prefix[:, query_index]  # [B, T]
    block = q_prefix[:, :, None] & in_prefix[:, None, :]  # [B, T, S]
    allowed = (causal[None] | block) & key_valid[:, None, :]  # [B, T, S]
    allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    return allowed[:, None]  # [B, 1, T, S]


# torch >= 2.5 takes grouped KV heads natively.
_SDPA_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, S, hd] -> [B, Hkv * n_rep, S, hd]; query head h reads kv head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _attend_one_query_grouped(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """One decode query [B, H, 1, hd] against grouped K/V [B, Hkv, S, hd] under a [B, 1, 1, S] mask.

    The query heads of each KV group become that group's query rows, so SDPA runs on the Hkv
    heads without copying K/V. transformers (sdpa_attention's `pack_gqa`) does the same for a
    one-token query with a mask, and matching its kernel call makes decode steps bit-identical
    (`enable_gqa` is the same maths in another reduction order).
    """
    B, H, _, hd = q.shape
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, H // Hkv, hd)  # [B, Hkv, n_rep, hd]: head h -> group h // n_rep
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # [B, Hkv, n_rep, hd]
    return out.reshape(B, H, 1, hd)  # [B, H, 1, hd]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention with grouped KV heads and optional logit soft-capping.

    Args:
        q: [B, H, T, hd]; k, v: [B, Hkv, S, hd] with H a multiple of Hkv.
        mask: [B, 1, T, S] bool (True = attend) or None for full attention.
        scale: multiplier of q.k (1/sqrt(hd), or Gemma 2's query_pre_attn_scalar ** -0.5).
        softcap: if set, scores become softcap * tanh(scores / softcap) before masking (Gemma 2).

    Returns:
        [B, H, T, hd] in q's dtype.
    """
    n_rep = q.shape[1] // k.shape[1]
    if softcap is None and n_rep > 1 and mask is not None and q.shape[2] == 1:
        # A masked decode step: transformers' kernel call, so that cached decoding is exact.
        return _attend_one_query_grouped(q, k, v, mask, scale)
    if softcap is None and _SDPA_GQA and n_rep > 1:
        # SDPA reads each shared KV head for its query group directly: copying K/V per query
        # head (repeat_kv) costs ~13% of a batched decode step.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # SDPA cannot soft-cap, so this path spells attention out; softmax runs in float32 because
    # bf16 softmax over long rows loses the small probabilities.
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, T, S]
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)
