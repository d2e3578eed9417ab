"""The generate loop of every decoder-based family: batched, streaming, with EOS and stop strings.

The model's family record (`vlmkit.models.registry`) supplies its `GenerationAdapter`, which turns
the processor's batch into decoder inputs (embeddings with the images in place, the prefix block,
positions) and names the cached decoder; the loop itself knows no family.

Rows are left-padded by the processor, so every row's next token goes to the same cache slot
while its RoPE position continues from its own length: batched output equals one-by-one output.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from torch import nn

from vlmkit.errors import ConfigError, PromptTooLongError
from vlmkit.generation.decode import advance, decode_one_token, prefill
from vlmkit.generation.sampling import SamplingConfig, sample_next
from vlmkit.models.common.contracts import CachedDecoder, DecoderInputs
from vlmkit.models.registry import family_of


@dataclass
class StreamEvent:
    """One new token of one row: its id and the text it adds (may be "" mid-character)."""

    row: int
    token_id: int
    text: str


@dataclass
class GenerationResult:
    """One row's output.

    logits: with `output_logits=True`, the raw (unprocessed) logits each of the row's tokens was
        chosen from, [steps, V] float32, one per step while the row was unfinished (so the step
        that chose EOS is included); as transformers' `generate(..., output_logits=True)`.
    """

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop_string" or "length"
    timing: dict = field(default_factory=dict)
    logits: torch.Tensor | None = None


class _Row:
    """Accumulates one row's tokens and text and decides when it is finished."""

    def __init__(self, tokenizer, stop_ids: set[int], stop_strings: tuple[str, ...]):
        self.tok, self.stop_ids, self.stop_strings = tokenizer, stop_ids, stop_strings
        self.ids: list[int] = []
        self.text = ""
        self.finish: str | None = None
        self.steps = 0  # tokens chosen for this row, EOS included

    def add(self, token_id: int) -> str:
        self.steps += 1
        if token_id in self.stop_ids:
            self.finish = "eos"
            return ""
        self.ids.append(token_id)
        new_text = self.tok.decode(self.ids)
        delta = new_text[len(self.text):] if new_text.startswith(self.text) else new_text
        self.text = new_text
        for s in self.stop_strings:
            if s in self.text:
                cut = self.text.index(s)
                delta = delta[: max(0, len(delta) - (len(self.text) - cut))]
                self.text, self.finish = self.text[:cut], "stop_string"
                break
        return delta


def _prepare(model: nn.Module, batch: dict, cfg: SamplingConfig) -> tuple[CachedDecoder, DecoderInputs, int]:
    """(decoder, its inputs, cache length) through the model's family adapter."""
    family = family_of(model)
    adapter = family.generation
    if adapter is None:
        raise ConfigError(f"{family.name} models do not generate text (a {family.kind} family)")
    T = batch["input_ids"].shape[1]
    max_len = T + cfg.max_new_tokens
    limit = adapter.context_length(model)
    if max_len > limit:
        raise PromptTooLongError(
            f"prompt of {T} tokens (with image tokens) + {cfg.max_new_tokens} new tokens "
            f"exceeds the model's context of {limit}"
        )
    return adapter.decoder(model), adapter.prepare(model, batch), max_len


@torch.inference_mode()
def generate_stream(
    model: nn.Module,
    tokenizer,
    batch: dict,
    cfg: SamplingConfig,
    decode_fn: Callable | None = None,
    results: list | None = None,
    output_logits: bool = False,
    cache_multiple: int = 1,
) -> Iterator[StreamEvent]:
    """Yield tokens as they are produced for a processed, left-padded batch.

    Args:
        model: a model of a family with a generation adapter (`kind == "vlm"`).
        batch: input_ids / attention_mask [B, T] and the family's image inputs as its processor
            returns them (PaliGemma: token_type_ids [B, T], pixel_values [M, 3, H, W] or
            image_features [M, N, D]).
        decode_fn: a (possibly compiled) replacement for `decode_one_token`.
        results: if given, a list that receives one GenerationResult per row at the end.
        output_logits: keep each step's raw logits in the results (`GenerationResult.logits`).
        cache_multiple: round the cache length (T + max new tokens) up to a multiple of this,
            the extra slots masked; `Pipeline` uses `batching.LANES` so that a continuous-batching
            server reproduces its bits (see generation/batching.py). 1: the length transformers'
            static cache has, which the parity tests compare bit for bit.
    """
    decode_fn = decode_fn or decode_one_token
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=batch["input_ids"].device).manual_seed(cfg.seed)
    t0 = time.perf_counter()
    lm, inputs, max_len = _prepare(model, batch, cfg)
    max_len = -(-max_len // cache_multiple) * cache_multiple
    logits, state = prefill(lm, inputs.embeds, inputs.attention_mask, inputs.in_prefix, inputs.positions, max_len)
    stop_ids = {tokenizer.eos_id, *cfg.extra_eos_ids}
    rows = [_Row(tokenizer, stop_ids, cfg.stop_strings) for _ in range(inputs.embeds.shape[0])]
    timing = {"prefill_s": None, "decode_s": 0.0, "new_tokens": 0}
    step_logits: list[torch.Tensor] = []  # [B, V] float32 per step, if output_logits
    try:
        for step in range(cfg.max_new_tokens):
            if output_logits:  # a copy: a compiled (CUDA-graph) step may reuse its output buffer
                step_logits.append(logits.to(torch.float32, copy=True))
            next_ids = sample_next(logits, cfg, gen)
            host_ids = next_ids.tolist()  # the one host sync per step
            if timing["prefill_s"] is None:
                timing["prefill_s"] = time.perf_counter() - t0
                t1 = time.perf_counter()
            for b, row in enumerate(rows):
                if row.finish is None:
                    delta = row.add(host_ids[b])
                    timing["new_tokens"] += 1
                    if row.finish != "eos":
                        yield StreamEvent(b, host_ids[b], delta)
            if all(r.finish for r in rows) or step == cfg.max_new_tokens - 1:
                break
            pos, slot = advance(state)
            logits = decode_fn(lm, next_ids[:, None], pos, slot, state.key_valid, state.in_prefix)
        timing["decode_s"] = time.perf_counter() - t1
    finally:
        lm.clear_caches()
    if timing["decode_s"] and timing["new_tokens"]:
        timing["tokens_per_s"] = timing["new_tokens"] / max(timing["decode_s"], 1e-9)
    if results is not None:
        stacked = torch.stack(step_logits, 1) if output_logits else None  # [B, steps, V]
        for b, r in enumerate(rows):
            row_logits = None if stacked is None else stacked[b, : r.steps]
            results.append(GenerationResult(r.text, r.ids, r.finish or "length", dict(timing), row_logits))


def generate(model: nn.Module, tokenizer, batch: dict, cfg: SamplingConfig, decode_fn=None,
             on_token: Callable[[StreamEvent], None] | None = None,
             output_logits: bool = False, cache_multiple: int = 1) -> list[GenerationResult]:
    """Run `generate_stream` to the end; `on_token` is called with every StreamEvent."""
    results: list[GenerationResult] = []
    for event in generate_stream(model, tokenizer, batch, cfg, decode_fn, results, output_logits, cache_multiple):
        if on_token is not None:
            on_token(event)
    return results
