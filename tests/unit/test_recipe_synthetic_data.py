"""The synthetic training data a recipe renders for itself (`recipes._data`), including the extra
reading scenes (`data.synthetic_ocr_scenes`) of the bundled model's stages 3 and 4."""

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.data.synth import write_dataset
from vlmkit.errors import ConfigError
from vlmkit.training.config import apply_overrides
from vlmkit.training.parallelize import DistInfo
from vlmkit.training.recipes import _data, get_recipe
from vlmkit.training.recipes.shapes_tiny import synth_world

ONE = DistInfo(rank=0, world_size=1, local_rank=0)


def _rows(manifest: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(manifest).read_text().splitlines()]


def _cfg(**overrides: str):
    return apply_overrides(get_recipe("shapes_tiny"), overrides)


def test_ocr_scenes_are_appended_after_the_world_rows(tmp_path: Path):
    cfg = _cfg(**{"data.synthetic_scenes": "6", "data.synthetic_ocr_scenes": "5"})
    with _data(cfg, ONE) as (train, _):
        rows = _rows(train)
        world = _rows(write_dataset(tmp_path / "w", 6, synth_world(0)))
        strip = [{k: v for k, v in r.items() if k != "image"} for r in rows]
        assert strip[: len(world)] == [{k: v for k, v in r.items() if k != "image"} for r in world]
        extra = rows[len(world):]
        assert len(extra) == 5 and {r["task"] for r in extra} == {"ocr"}
        assert all(r["prefix"] == "ocr" and r["suffix"].isalpha() and r["suffix"].isupper() for r in extra)
        for r in rows:  # absolute paths that open, and each OCR image is its own scene
            assert Path(r["image"]).is_absolute() and Image.open(r["image"]).size == (64, 64)
        assert len({r["image"] for r in extra}) == 5


def test_ocr_scenes_are_seeded_and_off_by_default():
    cfg = _cfg(**{"data.synthetic_scenes": "2", "data.synthetic_ocr_scenes": "4"})
    with _data(cfg, ONE) as (a, _):
        words_a = [r["suffix"] for r in _rows(a)][-4:]
    with _data(cfg, ONE) as (b, _):
        assert [r["suffix"] for r in _rows(b)][-4:] == words_a
    cfg.data.synthetic_ocr_seed = 8
    with _data(cfg, ONE) as (c, _):
        assert [r["suffix"] for r in _rows(c)][-4:] != words_a
    with _data(_cfg(**{"data.synthetic_scenes": "2"}), ONE) as (d, _):
        assert len(_rows(d)) == len(_rows(write_dataset(Path(d).parent / "again", 2, synth_world(0))))


def test_ocr_scenes_with_a_manifest_is_a_config_error(tmp_path: Path):
    cfg = _cfg(**{"data.manifest": str(tmp_path / "m.jsonl"), "data.synthetic_ocr_scenes": "10"})
    with pytest.raises(ConfigError, match="synthetic_ocr_scenes"):
        cfg.validate()
    _cfg(**{"data.manifest": str(tmp_path / "m.jsonl")}).validate()  # the default (0) is fine
    with pytest.raises(ConfigError, match="synthetic_ocr_scenes must be >= 0"):
        _cfg(**{"data.synthetic_ocr_scenes": "-1"}).validate()
