"""Synthetic data: determinism, exact boxes, and suffixes that agree with the scene."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from vlmkit.data.synth import (
    SynthConfig,
    _loc_tokens,
    all_examples,
    generate_scene,
    make_examples,
    position_name,
    write_dataset,
)
from vlmkit.errors import ConfigError

CFG = SynthConfig()
_LOC = re.compile(r"<loc(\d{4})><loc(\d{4})><loc(\d{4})><loc(\d{4})> ([a-z]+(?: [a-z]+)?)")


def _scenes(n: int, cfg: SynthConfig = CFG, seed: int = 0):
    return [generate_scene(np.random.default_rng([seed, i]), cfg) for i in range(n)]


def _tree_digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path):
    for shards in (False, True):
        a = write_dataset(tmp_path / f"a{shards}", 12, CFG, shards=shards, shard_size=10)
        b = write_dataset(tmp_path / f"b{shards}", 12, CFG, shards=shards, shard_size=10)
        da, db = _tree_digest(a.parent), _tree_digest(b.parent)  # whole output folder
        assert da == db and len(da) > 2


def test_other_seed_gives_unrelated_split(tmp_path):
    a = write_dataset(tmp_path / "a", 20, CFG)
    b = write_dataset(tmp_path / "b", 20, SynthConfig(seed=1))
    ha = set(_tree_digest(a.parent / "images").values())
    hb = set(_tree_digest(b.parent / "images").values())
    assert len(ha) == 20 and not ha & hb
    rows_a = [json.loads(line) for line in a.read_text().splitlines()]
    assert all(r["image"].startswith("images/") and r["prefix"] and r["suffix"] for r in rows_a)


def test_boxes_match_rendered_pixels():
    for scene in _scenes(60):
        pixels = np.asarray(scene.image)  # (H, W, 3)
        rgbs = [o.rgb for o in scene.objects]
        for obj in scene.objects:
            if rgbs.count(obj.rgb) > 1:  # two shapes jittered to one colour: cannot tell apart
                continue
            ys, xs = np.nonzero((pixels == np.array(obj.rgb)).all(-1))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.box
            x1, y1, x2, y2 = obj.box
            fill = len(xs) / ((x2 - x1) * (y2 - y1))
            assert fill > 0.25, (obj, fill)  # the box is tight around a solid shape


def test_word_ink_lies_inside_word_box():
    scenes = [s for s in _scenes(40) if s.word is not None]
    assert len(scenes) >= 5
    for scene in scenes:
        pixels = np.asarray(scene.image).astype(int)
        dark = (pixels < 110).all(-1)  # only text ink is dark in every channel
        ys, xs = np.nonzero(dark)
        x1, y1, x2, y2 = scene.word.box
        assert len(xs) > 10
        assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
        for obj in scene.objects:  # the word never overlaps a shape
            a = obj.box
            assert a[2] <= x1 or x2 <= a[0] or a[3] <= y1 or y2 <= a[1]


def test_loc_tokens_follow_the_parser_convention():
    # floor(c / size * 1024) clipped to 1023, order y1 x1 y2 x2 (see vlmkit.tasks.parsing).
    assert _loc_tokens((0, 0, 64, 64), (64, 64)) == "<loc0000><loc0000><loc1023><loc1023>"
    assert _loc_tokens((16, 32, 48, 63), (64, 64)) == "<loc0512><loc0256><loc1008><loc0768>"
    assert _loc_tokens((10, 0, 20, 5), (100, 50)) == "<loc0000><loc0102><loc0102><loc0204>"


def _position(box, size):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = ["left", "", "right"][min(int(3 * cx / size), 2)]
    row = ["top", "", "bottom"][min(int(3 * cy / size), 2)]
    return f"{row} {col}".strip() or "center"


def _check_vqa(scene, q: str, a: str) -> None:
    objs = scene.objects
    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        (obj,) = [o for o in objs if o.shape == m[1]]
        assert a == obj.color
    elif m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        (obj,) = [o for o in objs if o.color == m[1]]
        assert a == obj.shape
    elif q == "how many shapes are there?":
        assert a == str(len(objs))
    elif m := re.fullmatch(r"how many (\w+) shapes are there\?", q):
        assert a == str(sum(o.color == m[1] for o in objs))
    elif m := re.fullmatch(r"how many (\w+)s are there\?", q):
        assert a == str(sum(o.shape == m[1] for o in objs))
    elif m := re.fullmatch(r"where is the (\w+) (\w+)\?", q):
        (obj,) = [o for o in objs if (o.color, o.shape) == (m[1], m[2])]
        assert a == _position(obj.box, scene.image.width)
    elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", q):
        assert a == ("yes" if any((o.color, o.shape) == (m[1], m[2]) for o in objs) else "no")
    else:
        raise AssertionError(f"unexpected question {q!r}")


def _check_detect(scene, prefix: str, suffix: str) -> None:
    queries = prefix.removeprefix("detect ").split(" ; ")
    size = scene.image.width
    matches = [_LOC.fullmatch(part) for part in suffix.split(" ; ")]
    found = [(m[5], [int(m[i]) / 1024 * size for i in (1, 2, 3, 4)]) for m in matches]
    raster = sorted(scene.objects, key=lambda o: (o.box[1], o.box[0]))
    expected = [(q, o) for q in queries for o in raster if q in (o.shape, o.name)]
    assert sorted(q for q, _ in found) == sorted(q for q, _ in expected) and expected
    for (label, (y1, x1, y2, x2)), (q, obj) in zip(found, expected):
        assert label == q  # boxes are grouped by query in prompt order
        # Exact: the side divides 1024, so every pixel edge is a bin start.
        assert np.allclose([x1, y1, x2, y2], obj.box, atol=1e-9)


def test_every_suffix_agrees_with_scene():
    kinds = set()
    for scene in _scenes(80):
        for task, subtasks in all_examples(scene, CFG).items():
            for examples in subtasks.values():
                for ex in examples:
                    kinds.add((ex.task, ex.subtask))
                    if task == "vqa":
                        _check_vqa(scene, ex.prefix.removeprefix("answer en "), ex.suffix)
                    elif task == "detect":
                        _check_detect(scene, ex.prefix, ex.suffix)
                    elif task == "ocr":
                        assert ex.prefix == "ocr" and ex.suffix == scene.word.text
                    else:
                        names = [f"a {o.name}" for o in scene.objects]
                        if scene.word:
                            names.append(f'the word "{scene.word.text}"')
                        assert ex.prefix == "caption en"
                        assert sorted(re.split(r", | and (?=a |the )", ex.suffix)) == sorted(names)
    assert {k for k, _ in kinds} == {"caption", "vqa", "detect", "ocr"} and len(kinds) >= 10


def test_caption_lists_objects_left_to_right():
    for scene in _scenes(30):
        ex = all_examples(scene, CFG)["caption"]["caption"][0]
        order = sorted(scene.objects, key=lambda o: o.box[0] + o.box[2])
        pos = [ex.suffix.index(f"a {o.name}") for o in order]
        assert pos == sorted(pos)


def test_position_name_skips_ambiguous_centres():
    assert position_name((0, 0, 10, 10), 64) == "top left"
    assert position_name((27, 27, 37, 37), 64) == "center"
    assert position_name((50, 27, 60, 37), 64) == "right"
    assert position_name((16, 0, 26, 10), 64, margin=0.05) is None  # centre x = 21 ~ 64/3


def test_make_examples_is_seeded_distinct_and_follows_weights():
    scenes = _scenes(40)
    a = [[e.prefix for e in make_examples(s, CFG)] for s in scenes]
    assert a == [[e.prefix for e in make_examples(s, CFG)] for s in scenes]
    assert all(len(p) == len(set(p)) == CFG.examples_per_scene for p in a)
    only_detect = SynthConfig(task_weights={"detect": 1.0}, examples_per_scene=2)
    tasks = {e.task for s in scenes for e in make_examples(s, only_detect)}
    assert tasks == {"detect"}
    ocr = [e for s in scenes for e in make_examples(s, SynthConfig(task_weights={"ocr": 1.0}))]
    assert ocr and len(ocr) == sum(s.word is not None for s in scenes)


def test_image_size_is_a_parameter():
    cfg = SynthConfig(image_size=128)
    scene = _scenes(1, cfg)[0]
    assert scene.image.size == (128, 128) and scene.image.mode == "RGB"
    assert all(0 <= v <= 128 for o in scene.objects for v in o.box)


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 8}, {"colors": ("teal",)}, {"task_weights": {"dance": 1.0}},
     {"min_shapes": 3, "max_shapes": 2}, {"shape_size": (0.4, 0.6)}, {"words": ("C3PO",)}],
)  # fmt: skip
def test_bad_config_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        SynthConfig(**kwargs)
