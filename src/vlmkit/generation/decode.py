"""Static-cache prefill and one-token decode (gpt-fast style) for every `CachedDecoder`.

Axes: B batch, T prompt tokens, S cache slots (prompt + new tokens), D width, V vocabulary.

`prefill` writes the whole (left-padded) prompt into a preallocated cache and returns the logits
of the last prompt position; `decode_one_token` appends one token per row. Both are plain
functions of tensors so that the caller can wrap `decode_one_token` in `torch.compile` (its
shapes never change during a generation, so one graph serves every step).
"""

from dataclasses import dataclass

import torch

from vlmkit.models.common.contracts import CachedDecoder


@dataclass
class DecodeState:
    """Per-row bookkeeping for cached decoding.

    key_valid: [B, S] bool, True at written, non-padding cache slots.
    in_prefix: [B, S] bool, True at image/prefix slots (bidirectional block).
    next_pos:  [B] int64, the RoPE position of each row's next token ([3, B] for M-RoPE).
    next_slot: int, the cache slot the next token is written to (same for all rows).
    """

    key_valid: torch.Tensor
    in_prefix: torch.Tensor
    next_pos: torch.Tensor
    next_slot: int


def prefill(
    lm: CachedDecoder,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    in_prefix: torch.Tensor,
    positions: torch.Tensor,
    max_len: int,
) -> tuple[torch.Tensor, DecodeState]:
    """Allocate caches of `max_len` slots, run the prompt, return (last logits [B, V], state).

    Args:
        embeds: [B, T, D] prompt embeddings (image features already spliced in).
        attention_mask: [B, T] 1 for tokens, 0 for padding; padding must be on the left so that
            the last column holds every row's last prompt token.
        in_prefix: [B, T] bool, the bidirectional block (image + prefix).
        positions: [B, T] int64 RoPE positions, or [3, B, T] for an M-RoPE decoder (Qwen2-VL),
            whose last prompt token must be text (equal on the three axes): decode then moves
            all three axes on by one per token, which is transformers' sequence index + rope delta.
    """
    B, T, _ = embeds.shape
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("generation needs left padding: a row ends with padding")
    device = embeds.device
    lm.setup_caches(B, max_len, embeds.dtype, device)
    key_valid = torch.zeros(B, max_len, dtype=torch.bool, device=device)
    key_valid[:, :T] = attention_mask.bool()
    prefix = torch.zeros(B, max_len, dtype=torch.bool, device=device)
    prefix[:, :T] = in_prefix & attention_mask.bool()
    slots = torch.arange(T, device=device)
    h = lm(embeds, positions, key_valid, prefix, slots)
    logits = lm.logits(h[:, -1:])[:, 0]  # [B, V]
    state = DecodeState(key_valid, prefix, positions[..., -1] + 1, T)
    return logits, state


def decode_one_token(
    lm: CachedDecoder,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slot: torch.Tensor,
    key_valid: torch.Tensor,
    in_prefix: torch.Tensor,
) -> torch.Tensor:
    """tokens [B, 1], positions [B, 1] (or [3, B, 1]), slot [1] -> logits [B, V]; key_valid must
    include `slot`."""
    h = lm(lm.embed(tokens), positions, key_valid, in_prefix, slot)
    return lm.logits(h)[:, 0]


def advance(state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
    """Open the next slot for attention; return (positions [B, 1], slot [1]) for the next step."""
    slot = torch.tensor([state.next_slot], device=state.key_valid.device)
    state.key_valid[:, state.next_slot] = True
    positions = state.next_pos[..., None]  # [B, 1] (or [3, B, 1])
    state.next_pos = state.next_pos + 1
    state.next_slot += 1
    return positions, slot
