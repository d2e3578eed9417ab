"""SamplingConfig refuses what cannot be sampled (one-line ConfigError naming the field), and tiny
temperatures are greedy in the library as on the command line."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import vlmkit
from vlmkit.errors import ConfigError
from vlmkit.generation.sampling import GREEDY_BELOW, SamplingConfig, sample_next

BAD = {
    "temperature nan": ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    "temperature inf": ({"temperature": float("inf")}, "temperature must be a finite number >= 0"),
    "temperature -inf": ({"temperature": float("-inf")}, "temperature must be a finite number >= 0"),
    "temperature negative": ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    "temperature negative denormal": ({"temperature": -5e-324}, "temperature must be a finite number >= 0"),
    "temperature a string": ({"temperature": "0.7"}, "temperature must be a finite number"),
    "top_p zero": ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    "top_p over one": ({"top_p": 1.01}, "top_p must be in (0, 1]"),
    "top_p negative": ({"top_p": -0.2}, "top_p must be in (0, 1]"),
    "top_p nan": ({"top_p": float("nan")}, "top_p must be in (0, 1]"),
    "top_k negative": ({"top_k": -1}, "top_k must be an integer >= 0"),
    "top_k a float": ({"top_k": 2.5}, "top_k must be an integer >= 0"),
    "max_new_tokens zero": ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    "max_new_tokens negative": ({"max_new_tokens": -3}, "max_new_tokens must be an integer >= 1"),
    "max_new_tokens a float": ({"max_new_tokens": 4.0}, "max_new_tokens must be an integer >= 1"),
    "seed negative": ({"seed": -1}, "seed must be an integer in [0, 2**64 - 1]"),
    "seed 2**64": ({"seed": 2**64}, "seed must be an integer in [0, 2**64 - 1]"),
    "seed a float": ({"seed": 1.5}, "seed must be an integer in [0, 2**64 - 1]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_one_line_config_errors(case):
    fields, message = BAD[case]
    with pytest.raises(ConfigError) as info:
        SamplingConfig(**fields)
    text = str(info.value)
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("fields", [
    {"seed": 0}, {"seed": 2**64 - 1}, {"top_p": 1.0}, {"top_p": 1e-9}, {"top_k": 0}, {"top_k": 1},
    {"temperature": 0}, {"temperature": 1}, {"max_new_tokens": 1},
])
def test_edge_values_are_accepted(fields):
    SamplingConfig(**fields)


@pytest.mark.parametrize("t", [0.0, 5e-324, 1e-310, 2.2e-308, GREEDY_BELOW / 2])
def test_tiny_temperatures_are_greedy(t):
    cfg = SamplingConfig(temperature=t, seed=1)
    assert cfg.greedy
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, cfg), logits.argmax(-1))


def test_temperatures_from_the_limit_on_sample():
    assert not SamplingConfig(temperature=GREEDY_BELOW).greedy
    logits = torch.zeros(1, 1000)  # uniform: a sample is almost never token 0 (the argmax)
    gen = torch.Generator().manual_seed(0)
    drawn = {int(sample_next(logits, SamplingConfig(temperature=1.0), gen)) for _ in range(20)}
    assert len(drawn) > 1


def test_top_k_zero_means_no_limit():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(1))
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    unlimited = sample_next(logits, SamplingConfig(temperature=1.0), gen())
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=1.0, top_k=0), gen()), unlimited)


def test_library_generate_at_a_denormal_temperature_is_greedy():
    """`vlmkit.load(...).generate` with temperature 1e-310 (inf logits once divided) runs and
    gives the greedy tokens."""
    pipe = vlmkit.load()  # the bundled tiny model
    image = Image.new("RGB", (32, 32), (10, 200, 30))
    greedy = pipe.generate("caption en", image, SamplingConfig(max_new_tokens=4))
    tiny = pipe.generate("caption en", image, SamplingConfig(max_new_tokens=4, temperature=1e-310, seed=5))
    assert tiny.token_ids == greedy.token_ids
