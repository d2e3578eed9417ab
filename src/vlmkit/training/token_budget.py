"""Token-budget batching: micro-batches filled by tokens, not by count (`--data.max_tokens_per_batch N`).

Native-resolution families (Pixtral, Mistral 3, Qwen2-VL) give an image as many tokens as its
size asks for: a 224 x 224 photo and an 896 x 448 page differ by 8x. Batches of a fixed count then
either waste memory on small images or overflow on large ones. Here each micro-batch takes the
next examples of the shuffled stream while their total length stays within the budget:

    lengths 60, 50, 70, 30, 90 with N = 128  ->  [60, 50] (110; +70 would be 180)  [70, 30]  [90]

A length is the example's whole sequence after the processor: text tokens plus the image tokens
its images expand to (`JsonlDataset(budget=N)` measures every row up front and hands it out as
the sample's ``num_tokens``; a row longer than N can never be batched and is a bad row, reported
by line or skipped with ``--data.bad_rows skip``). The sum counts real tokens, not the padded
B x T_max of the decoder's batch; the vision encoder packs its images, so it sees no padding.

Order and resume. Batches are cut from the stream in order, so the same seed gives the same
batches. The example that did not fit is held for the next batch; `state_dict` is then the
stream's position *before* that example, so a resumed run re-reads it and cuts the same batches
as an uninterrupted one. Each rank cuts its own share of the stream; `grad_accum` micro-batches per
rank make a step (the loss is normalised by the global count of target tokens, see
`vlmkit.training.trainer`). Resuming on another number of ranks is refused by the stream when
the ranks stopped at different positions, which is the usual case here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlmkit.data.datasets import ShuffledStream
from vlmkit.errors import ConfigError, DataError
from vlmkit.training.collate import BatchStream


class TokenBudgetStream(BatchStream):
    """Endless micro-batches of at most `budget` tokens each (every sample carries ``num_tokens``);
    resumable at the exact sample (see the module doc)."""

    def __init__(self, stream: ShuffledStream, processor, budget: int,
                 collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]] | None = None,
                 micro_batch_size: int = 1):
        # micro_batch_size: only the evaluation batches' size (`Trainer.evaluate`).
        super().__init__(stream, processor, micro_batch_size, collate_fn)
        self.budget = budget
        self._held: tuple[dict, dict] | None = None  # (the sample that did not fit, stream state before it)

    def _pull(self) -> tuple[dict, dict]:
        """(the next sample, the stream state from before it)."""
        if self._held is not None:
            held, self._held = self._held, None
            return held
        state = self.stream.state_dict()
        return self._next_sample(), state

    def next_samples(self) -> list[dict]:
        """The next micro-batch's samples: the longest run of the stream within the budget."""
        samples, total = [], 0
        while True:
            sample, state = self._pull()
            n = sample.get("num_tokens")
            if n is None:
                raise ConfigError("data.max_tokens_per_batch needs samples measured up front (JsonlDataset(budget=N))")
            if n > self.budget:  # the dataset refuses such rows; a stream without that check lands here
                raise DataError(f"an example of {n} tokens is longer than data.max_tokens_per_batch={self.budget}")
            if samples and total + n > self.budget:
                self._held = (sample, state)
                return samples
            samples.append(sample)
            total += n

    def next_batch(self) -> dict[str, torch.Tensor]:
        return self.collate(self.next_samples())

    def state_dict(self) -> dict:
        return self._held[1] if self._held is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._held = None
        super().load_state_dict(state)

    def load_resplit_state(self, states: list[dict]) -> None:
        self._held = None
        super().load_resplit_state(states)


def make_batches(stream: ShuffledStream, processor, micro_batch_size: int, collate_fn, budget: int | None) -> BatchStream:
    """`BatchStream` of `micro_batch_size` examples, or `TokenBudgetStream` when `budget` is set
    (its dataset must have measured its rows: `JsonlDataset(budget=...)`)."""
    if budget is None:
        return BatchStream(stream, processor, micro_batch_size, collate_fn=collate_fn)
    if getattr(stream.dataset, "lengths", None) is None:
        raise ConfigError("data.max_tokens_per_batch needs a JSONL manifest (rows are measured up front), "
                          "not streamed tar shards")
    return TokenBudgetStream(stream, processor, budget, collate_fn, micro_batch_size)
