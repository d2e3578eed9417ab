"""Sampling against transformers' own logits warpers, and seeded frequencies against the exact law.

transformers (test-only reference) applies, when sampling, `TemperatureLogitsWarper` (skipped at
T = 1), then `TopKLogitsWarper`, then `TopPLogitsWarper` (`GenerationMixin._get_logits_processor`),
each with min_tokens_to_keep=1 outside beam search. `process_logits` must give the same float32
logits, -inf at the same places, on unsorted logits with ties and -inf entries.
"""

import pytest
import torch

from vlmkit.generation.sampling import SamplingConfig, process_logits, sample_next

tf = pytest.importorskip("transformers")

N_DRAWS = 20_000
P_MIN = 1e-4  # chi-square p-value bound; the draws are seeded, so each test is deterministic


def _logits(rows: int = 6, vocab: int = 50, seed: int = 0, ties: bool = True) -> torch.Tensor:
    """Unsorted random logits with a few -inf entries per row; with `ties`, rounded to 0.25 so
    that many are equal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 2  # [rows, vocab]
    if ties:
        x = torch.round(x * 4) / 4
    drop = torch.rand(rows, vocab, generator=g) < 0.1
    return x.masked_fill(drop, float("-inf"))


def _assert_equal_up_to_boundary_ties(got: torch.Tensor, ref: torch.Tensor, logits: torch.Tensor) -> None:
    """Same number kept per row, same values where both keep a token, and any disagreement only
    among tokens tied with the row's lowest kept logit (which of them a sort ranks first is the
    only freedom: transformers' sort is not stable, vlmkit's is)."""
    kept, kept_ref = torch.isfinite(got), torch.isfinite(ref)
    assert torch.equal(kept.sum(-1), kept_ref.sum(-1))
    both = kept & kept_ref
    assert torch.equal(got[both], ref[both])
    lowest = logits.masked_fill(~kept, float("inf")).amin(-1, keepdim=True)  # [B, 1]
    assert bool((logits[kept != kept_ref] == lowest.expand_as(logits)[kept != kept_ref]).all())


def _reference(logits: torch.Tensor, temperature: float, top_k=None, top_p=None) -> torch.Tensor:
    """The warpers in the order transformers' generate builds them."""
    procs = tf.LogitsProcessorList()
    if temperature != 1.0:
        procs.append(tf.TemperatureLogitsWarper(temperature))
    if top_k is not None:
        procs.append(tf.TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        procs.append(tf.TopPLogitsWarper(top_p))
    return procs(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())


def _ours(logits, temperature, top_k=None, top_p=None):
    return process_logits(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_temperature_equals_transformers(temperature):
    x = _logits()
    assert torch.equal(_ours(x, temperature), _reference(x, temperature))


@pytest.mark.parametrize("k", [1, 3, 7, 49, 60])
def test_top_k_equals_transformers(k):
    """Ties at the k-th logit are all kept, as in TopKLogitsWarper (`scores < kth` is removed)."""
    x = _logits(seed=1)
    got = _ours(x, 1.0, top_k=k)
    assert torch.equal(got, _reference(x, 1.0, top_k=k))
    if k == 7:  # the rounded logits put ties at the 7th place in some row: more than k kept there
        assert int(torch.isfinite(got).sum(-1).max()) > k


@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.8, 0.95, 0.999])
def test_top_p_equals_transformers(p):
    """Bit-equal on distinct logits; with ties, equal up to which tied token sits at the cut."""
    for seed in range(4):
        x = _logits(seed=10 + seed, ties=False)
        assert torch.equal(_ours(x, 1.0, top_p=p), _reference(x, 1.0, top_p=p)), (p, seed)
        x = _logits(seed=10 + seed)
        _assert_equal_up_to_boundary_ties(_ours(x, 1.0, top_p=p), _reference(x, 1.0, top_p=p), x)


@pytest.mark.parametrize("p,kept", [(0.25, 1), (0.5, 2), (0.75, 3), (0.76, 4)])
def test_top_p_exact_boundary(p, kept):
    """Four equal logits: each token holds exactly 0.25 (exact in float32), so the ascending
    cumulative mass is exactly 0.25, 0.5, 0.75, 1. A token whose cumulative mass equals 1 - p is
    dropped (`<=`), so p = 0.25 keeps 1 and p = 0.76 keeps all 4; vlmkit's stable sort breaks
    the tie towards the higher token ids."""
    x = torch.zeros(1, 4)
    got, ref = _ours(x, 1.0, top_p=p), _reference(x, 1.0, top_p=p)
    assert int(torch.isfinite(got).sum()) == int(torch.isfinite(ref).sum()) == kept
    assert torch.isfinite(got[0, 4 - kept:]).all()


@pytest.mark.parametrize("temperature,k,p", [(0.7, 5, 0.8), (1.5, 12, 0.6), (1.0, 30, 0.9), (0.5, 3, 0.99)])
def test_combined_order_equals_transformers(temperature, k, p):
    for seed in range(3):
        x = _logits(seed=20 + seed, ties=False)
        assert torch.equal(_ours(x, temperature, k, p), _reference(x, temperature, k, p)), seed
        x = _logits(seed=20 + seed)
        _assert_equal_up_to_boundary_ties(_ours(x, temperature, k, p), _reference(x, temperature, k, p), x)


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square p-value of `counts` against `probs` (float64, zero-probability cells must
    be empty: asserted)."""
    support = probs > 0
    assert int(counts[~support].sum()) == 0, "drew a token the distribution excludes"
    expected = probs[support] * counts.sum()
    stat = ((counts[support] - expected) ** 2 / expected).sum()
    dof = int(support.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def _frequencies(logits: torch.Tensor, cfg: SamplingConfig, seed: int = 0) -> torch.Tensor:
    """N_DRAWS seeded draws of one [V] distribution (one batched call, as generate samples rows)."""
    g = torch.Generator().manual_seed(seed)
    draws = sample_next(logits[None].expand(N_DRAWS, -1), cfg, g)
    return torch.bincount(draws, minlength=logits.shape[-1]).double()


LOGITS8 = torch.tensor([1.3, -0.4, 0.9, 2.1, -1.7, 0.2, 1.8, -0.9])  # unsorted, vocabulary of 8


def _law(temperature: float, keep: list[int] | None = None) -> torch.Tensor:
    """softmax(logits / T) in float64, restricted to `keep` and renormalised."""
    w = torch.softmax(LOGITS8.double() / temperature, -1)
    if keep is not None:
        mask = torch.zeros(8, dtype=torch.bool)
        mask[keep] = True
        w = w * mask
    return w / w.sum()


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_sampling_frequencies_follow_softmax_over_temperature(temperature):
    counts = _frequencies(LOGITS8, SamplingConfig(temperature=temperature))
    assert _chi_square_p(counts, _law(temperature)) > P_MIN
    # ... and not the T = 1 law (which a sampler ignoring the temperature would follow).
    assert _chi_square_p(counts, _law(1.0)) < P_MIN


def test_sampling_frequencies_follow_renormalised_top_k():
    """Top 3 of LOGITS8 are ids 3, 6, 0 (2.1, 1.8, 1.3)."""
    counts = _frequencies(LOGITS8, SamplingConfig(temperature=1.5, top_k=3), seed=1)
    assert _chi_square_p(counts, _law(1.5, keep=[3, 6, 0])) > P_MIN


def test_sampling_frequencies_follow_renormalised_top_p():
    """At T = 0.7 the sorted probabilities of ids 3, 6, 0, 2 are about 0.39, 0.26, 0.13, 0.07 (cumulative 0.84 after
    three), so p = 0.8 keeps exactly those three."""
    law = _law(0.7)
    assert law[[3, 6]].sum() < 0.8 <= law[[3, 6, 0]].sum()
    counts = _frequencies(LOGITS8, SamplingConfig(temperature=0.7, top_p=0.8), seed=2)
    assert _chi_square_p(counts, _law(0.7, keep=[3, 6, 0])) > P_MIN
