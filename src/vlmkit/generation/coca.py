"""CoCa caption generation with a static KV cache (gpt-fast style), plain PyTorch.

CoCa does not fit the `GenerationAdapter` contract of the decoder-based families (its decoder
cross-attends to caption tokens and adds a CLS position), so it has this small loop of its own.

Axes: B batch, T0 prompt tokens, S cache slots (= T0 + new tokens), n caption queries,
W width, V vocabulary.

The image is encoded once; each multimodal layer's cross-attention keys/values over the n
caption tokens are projected once (`CoCa.caption_kv`) and reused at every step, and every
self-attention layer (unimodal and multimodal) appends to a preallocated `KVCache`. `prefill`
and `decode_one_token` are plain functions of tensors; `decode_one_token` keeps the same shapes at
every step, so a caller can wrap it in `torch.compile`.
"""

import torch

from vlmkit.errors import PromptTooLongError
from vlmkit.generation.sampling import SamplingConfig, sample_next
from vlmkit.models.coca.model import KV, CoCa


def prefill(model: CoCa, pixel_values: torch.Tensor, prompt_ids: torch.Tensor, max_len: int):
    """Encode images, allocate caches of `max_len` slots and run the prompt.

    Args:
        pixel_values: [B, 3, H, W]; prompt_ids: [B, T0] int64 (no padding, usually just BOS).

    Returns:
        (logits of the last prompt position [B, V], per-layer cross-attention (k, v)).
    """
    B, T0 = prompt_ids.shape
    _, caption_tokens = model.encode_image_all(pixel_values)  # [B, n, W]
    kvs = model.caption_kv(caption_tokens)
    model.setup_caches(B, max_len, caption_tokens.dtype, caption_tokens.device)
    slots = torch.arange(T0, device=prompt_ids.device)
    return model.decode_step(prompt_ids, slots, kvs)[:, -1], kvs


def decode_one_token(model: CoCa, tokens: torch.Tensor, slot: torch.Tensor, kvs: list[KV]) -> torch.Tensor:
    """tokens [B, 1] written at cache slot [1] -> next-token logits [B, V]."""
    return model.decode_step(tokens, slot, kvs)[:, 0]


@torch.no_grad()
def generate_caption(
    model: CoCa,
    pixel_values: torch.Tensor,
    sampling: SamplingConfig | None = None,
    prompt_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Caption a batch of images.

    Args:
        pixel_values: [B, 3, H, W] float.
        sampling: greedy by default; `max_new_tokens` is capped so that prompt plus caption fit in
            `cfg.context_length` (the model has no positions beyond it); `stop_strings` need a
            tokenizer and are not handled here.
        prompt_ids: [B, T0] int64 caption prefix; default a single BOS per row.

    Returns:
        new token ids [B, L] int64 (L <= max_new_tokens), each row ending at its EOS (included)
        and padded with `pad_token_id` after it; generation stops when every row has ended.
    """
    cfg, sampling = model.cfg, sampling or SamplingConfig()
    B, device = pixel_values.shape[0], pixel_values.device
    if prompt_ids is None:
        prompt_ids = torch.full((B, 1), cfg.bos_token_id, dtype=torch.long, device=device)
    T0 = prompt_ids.shape[1]
    if T0 >= cfg.context_length:
        raise PromptTooLongError(f"a {T0}-token prompt leaves no room in CoCa's context of {cfg.context_length}")
    n_new = min(sampling.max_new_tokens, cfg.context_length - T0)
    gen = torch.Generator(device).manual_seed(sampling.seed) if sampling.seed is not None else None
    eos = torch.tensor([cfg.eos_token_id, *sampling.extra_eos_ids], device=device)
    try:
        logits, kvs = prefill(model, pixel_values, prompt_ids, T0 + n_new)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(n_new):
            token = sample_next(logits, sampling, gen).masked_fill(done, cfg.pad_token_id)  # [B]
            out.append(token)
            done = done | torch.isin(token, eos)
            if bool(done.all()) or step == n_new - 1:
                break
            slot = torch.tensor([T0 + step], device=device)
            logits = decode_one_token(model, token[:, None], slot, kvs)
    finally:
        model.clear_caches()
    return torch.stack(out, dim=1)  # [B, L]
