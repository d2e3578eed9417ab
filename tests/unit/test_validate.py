"""vlmkit.validate: config types from annotations, image statistics, dtype kinds."""

import json
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

from vlmkit.errors import CheckpointError
from vlmkit.models.paligemma.config import PRESETS
from vlmkit.models.paligemma.hf_mapping import config_from_hf, config_to_hf
from vlmkit.validate import build_config, cast_checked, check_types, image_stats


@dataclass(kw_only=True)
class Inner:
    size: int
    kinds: tuple[Literal["a", "b"], ...] | None = None


@dataclass(kw_only=True)
class Outer:
    inner: Inner
    eps: float = 1e-6
    flag: bool = False
    window: int | None = None
    name: str = "x"
    pairs: tuple[int, ...] = field(default_factory=tuple)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_passes(preset):
    """Real configs (round-tripped through the HF format) are accepted as they are."""
    cfg = PRESETS[preset]
    check_types(cfg, "preset")
    check_types(build_config(config_from_hf, config_to_hf(cfg), "config.json"), "config.json")


@pytest.mark.parametrize("kwargs,problem", [
    (dict(inner=Inner(size="3")), "inner.size: expected an integer, got a string"),
    (dict(inner=Inner(size=True)), "inner.size: expected an integer, got a boolean"),
    (dict(inner=Inner(size=-1)), "inner.size: must be >= 0"),
    (dict(inner=Inner(size=1, kinds=("a", "c"))), "inner.kinds: item 1: expected one of 'a', 'b'"),
    (dict(inner=Inner(size=1), eps=float("inf")), "eps: expected a finite number"),
    (dict(inner=Inner(size=1), flag=1), "flag: expected true or false"),
    (dict(inner=Inner(size=1), window="8"), "window: expected an integer"),
    (dict(inner=Inner(size=1), name=3), "name: expected a string"),
    (dict(inner=Inner(size=1), pairs=(1, 2.5)), "pairs: item 1: expected an integer"),
])
def test_type_problems_name_the_field(kwargs, problem):
    with pytest.raises(CheckpointError, match="^f.json: " + problem.replace("(", r"\(").replace(")", r"\)")):
        check_types(Outer(**kwargs), "f.json")


def test_ints_fit_floats_and_none_fits_optional():
    check_types(Outer(inner=Inner(size=0), eps=1, window=None), "f.json")


@pytest.mark.parametrize("mean,std,expect", [
    (0.4, 0.2, ((0.4,) * 3, (0.2,) * 3)),
    ([0.1, 0.2, 0.3], [1, 2, 3], ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))),
])
def test_image_stats_accepts_what_transformers_accepts(mean, std, expect, tmp_path):
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"image_mean": mean, "image_std": std}))
    assert image_stats(path) == expect


def test_cast_within_kind_only():
    t = torch.ones(2, dtype=torch.float32)
    assert cast_checked(t, torch.bfloat16, "k", "ckpt").dtype == torch.bfloat16
    with pytest.raises(CheckpointError, match="tensor k is int64 but the model expects float32"):
        cast_checked(torch.ones(2, dtype=torch.int64), torch.float32, "k", "ckpt")
