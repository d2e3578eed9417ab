"""Choosing the next token from logits, on the logits' device (no host sync)."""

from dataclasses import dataclass, field

import torch

from vlmkit.errors import ConfigError


@dataclass(kw_only=True)
class SamplingConfig:
    """How to pick tokens and when to stop.

    temperature 0 means greedy (argmax); top_k / top_p restrict sampling to the k most likely
    tokens / the smallest set whose probability reaches p. `seed` makes sampling reproducible.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    extra_eos_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep every token whose logit is >= the k-th largest (ties at the k-th are all kept)."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest top set whose probability reaches p (nucleus sampling).

    Walking up from the least likely token, a token is dropped while the mass up to and
    including it is <= 1 - p; the top token always stays. This is the rule (and the float32
    comparison) of transformers' `TopPLogitsWarper` with min_tokens_to_keep=1, so a token exactly
    at the boundary is dropped by both. The ascending sort is stable, so at a tie on the cut the
    lower token ids are dropped first; transformers' sort is not stable and may keep other tied
    tokens there (the number kept is the same; tests/unit/test_sampling_reference.py).
    """
    sorted_logits, order = torch.sort(logits, dim=-1, stable=True)  # [B, V] ascending
    cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    drop_sorted = cum <= 1 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """logits [B, V] -> the float32 logits that are sampled from (softmax gives the distribution).

    Applies temperature, then top-k, then top-p, in the order transformers' `generate` applies
    `TemperatureLogitsWarper`, `TopKLogitsWarper` and `TopPLogitsWarper`; removed tokens are -inf.
    Only meaningful when sampling (`cfg.temperature > 0`).
    """
    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None:
        logits = _filter_top_k(logits, cfg.top_k)
    if cfg.top_p is not None and cfg.top_p < 1:
        logits = _filter_top_p(logits, cfg.top_p)
    return logits


def sample_next(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [B, V] (any float dtype) -> next token ids [B] int64, on the same device."""
    if cfg.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(process_logits(logits, cfg), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
