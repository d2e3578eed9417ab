"""Each curation rule on small built-in cases: what it keeps and what it removes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vlmkit.curation.config import parse_config
from vlmkit.curation.engine import build_rules
from vlmkit.curation.rules import Resources, build_config, image_of
from vlmkit.data.synth import SynthConfig, generate_scene
from vlmkit.errors import ConfigError


def png(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(i: int, size: int = 64) -> Image.Image:
    return generate_scene(np.random.default_rng([0, i]), SynthConfig(image_size=size)).image


def row(text: str = "a red circle and a blue square", image: Image.Image | bytes | None = None, i: int = 0) -> dict:
    data = image if isinstance(image, bytes) else png(image if image is not None else scene(i))
    return {"__index__": i, "__key__": f"row{i}", "text": text, "meta": {}, "image_bytes": data}


def make(name: str, **table):
    cfg = build_config(name, table)
    from vlmkit.curation.rules import RULES

    return RULES[name].build(cfg, Resources(batch_size=8))


def kept(rule, rows: list[dict]) -> list[bool]:
    return rule.decide_batch(rule.score_batch(rows))


def test_text_length():
    rule = make("text_length", min_words=2, max_words=10)
    assert kept(rule, [row("a red circle"), row("circle"), row(" ".join(["red"] * 11)), row("")]) == [
        True, False, False, False]  # fmt: skip


def test_text_repetition():
    rule = make("text_repetition", max_ratio=0.5)
    assert rule.score(row("cat cat cat cat")) == pytest.approx(0.75)
    assert kept(rule, [row("a red circle left of a blue square"), row("buy buy buy buy now")]) == [True, False]


def test_language_keeps_english_only():
    pytest.importorskip("lingua")
    rule = make("language", languages=["en"], candidates=["en", "fr", "de"])
    rows = [row("a red circle to the left of a blue square"),
            row("un cercle rouge à gauche d'un carré bleu"), row("ein roter Kreis links von einem blauen Quadrat")]
    assert kept(rule, rows) == [True, False, False]
    assert [rule.summary(v) for v in rule.score_batch(rows)] == ["en", "fr", "de"]


def test_text_patterns_default_and_custom():
    rule = make("text_patterns")
    rows = [row("a red circle"), row("see https://example.com/cat for more"), row("stock photo of a dog")]
    assert [rule.summary(v) for v in rule.score_batch(rows)] == ["clean", "url", "boilerplate"]
    assert kept(rule, rows) == [True, False, False]
    custom = make("text_patterns", patterns={"banned": [r"\bcircle\b"]})
    assert kept(custom, rows) == [False, True, True]
    with pytest.raises(ConfigError, match="bad regex"):
        make("text_patterns", patterns={"x": ["("]})


def test_image_decode_and_size_rules():
    good, broken = row(), row(image=b"not an image at all")
    assert kept(make("image_decode"), [good, broken]) == [True, False]
    tiny = row(image=scene(1).resize((8, 8)))
    assert kept(make("image_size", min_side=32), [good, tiny]) == [True, False]
    wide = row(image=Image.new("RGB", (200, 20), "red").copy())
    assert kept(make("aspect_ratio", max_ratio=3.0), [good, wide]) == [True, False]
    assert make("aspect_ratio").score(wide) == pytest.approx(10.0)


def test_blank_image_is_removed():
    blank = row(image=Image.new("RGB", (64, 64), (128, 128, 128)))
    assert kept(make("image_uniform", min_std=4.0), [row(), blank]) == [True, False]


def test_exif_orientation_is_applied_before_measuring():
    image = Image.new("RGB", (60, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    r = row(image=png(image, "JPEG", exif=exif.tobytes()))
    assert image_of(r).size == (20, 60)
    assert make("image_size", min_side=1).score(r) == 20


def test_exact_dedup_removes_the_planted_copy_only():
    a, b = scene(1), scene(2)
    rows = [row("x", a, 0), row("y", b, 1), row("x", a, 2), row("z", a, 3)]
    assert kept(make("exact_dedup", on="both"), rows) == [True, True, False, True]
    assert kept(make("exact_dedup", on="image"), [dict(r) for r in rows]) == [True, True, False, False]
    assert kept(make("exact_dedup", on="caption"), [dict(r) for r in rows]) == [True, True, False, True]


def test_phash_finds_a_resized_recompressed_copy():
    pytest.importorskip("imagehash")
    original = scene(3, size=128)
    copy = Image.open(io.BytesIO(png(original.resize((96, 96)), "JPEG", quality=70)))
    rows = [row(image=original, i=0), row(image=scene(4, size=128), i=1), row(image=png(copy, "JPEG", quality=70), i=2)]
    rule = make("phash_dedup", max_distance=6)
    assert kept(rule, rows) == [True, True, False]
    assert rule.nearest(rule.score(rows[2])) <= 6


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    from vlmkit.weights.create import create_checkpoint

    return str(create_checkpoint(tmp_path_factory.mktemp("m") / "siglip", "debug", family="siglip"))


def test_embedding_dedup_finds_a_near_duplicate(siglip):
    pytest.importorskip("faiss")
    a = scene(5)
    rows = [row(image=a, i=0), row(image=Image.effect_noise((64, 64), 80).convert("RGB"), i=1),
            row(image=png(a.resize((56, 56)), "JPEG", quality=90), i=2), row(image=a, i=3)]
    rule = make("embed_dedup", model=siglip, threshold=0.995)
    e = rule.score_batch(rows)
    assert float(e[0] @ e[1]) < 0.995  # noise vs scene: far apart even for random weights
    assert kept(rule, rows[:2]) == [True, True]
    assert kept(rule, rows[2:]) == [False, False]  # found through the index of the earlier batch


def test_clip_score_threshold_and_top_fraction(siglip):
    rows = [row(f"a caption number {i}", scene(i), i) for i in range(12)]
    rule = make("clip_score", model=siglip, threshold=-1.0)
    scores = rule.score_batch(rows)
    assert all(-1.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1
    top = make("clip_score", model=siglip, top_fraction=0.25, fit_rows=12)
    top.fit(rows)
    assert sum(kept(top, rows)) == 3
    assert make("clip_score", model=siglip, threshold=max(scores) + 1e-6).decide_batch(scores) == [False] * 12


def test_kmeans_balance_caps_each_cluster(siglip):
    pytest.importorskip("faiss")
    rows = [row(image=scene(i), i=i) for i in range(6)] + \
        [row(image=Image.effect_noise((64, 64), 100).convert("RGB"), i=6 + i) for i in range(6)]
    rule = make("kmeans_balance", model=siglip, k=2, cap=2, fit_rows=12, seed=0)
    rule.fit(rows)
    clusters = rule.score_batch(rows)
    decisions = kept(rule, rows)
    for c in set(clusters):
        assert sum(k for k, cc in zip(decisions, clusters) if cc == c) == min(2, clusters.count(c))
    again = make("kmeans_balance", model=siglip, k=2, cap=2, fit_rows=12, seed=0)
    again.fit(rows)
    assert again.score_batch(rows) == clusters  # seeded: the same clusters


def test_concept_balance_cuts_head_concepts_and_keeps_tail_ones():
    rows = [row("a red circle", i=i) for i in range(200)] + [row("a blue square", i=200 + i) for i in range(5)]
    rows.append(row("nothing known here", i=205))
    rule = make("concept_balance", concepts=["red", "blue", "circle", "square"], cap=10, seed=1)
    rule.fit(rows)
    assert rule.frequency == {"red": 200, "circle": 200, "blue": 5, "square": 5}
    decisions = kept(rule, rows)
    assert all(decisions[200:205]) and not decisions[205]  # tail kept, unmatched dropped
    assert 15 <= sum(decisions[:200]) <= 60  # p = 1 - 0.95^2 = 0.0975 per row: about 19.5
    again = make("concept_balance", concepts=["red", "blue", "circle", "square"], cap=10, seed=1)
    again.fit(rows)
    assert kept(again, rows) == decisions


def test_ocr_finds_a_printed_caption():
    pytest.importorskip("rapidocr_onnxruntime")
    printed = Image.new("RGB", (320, 96), "white")
    ImageDraw.Draw(printed).text((10, 30), "red circle", fill="black", font=ImageFont.load_default(size=32))
    rule = make("ocr_caption", max_overlap=0.5)
    rows = [row("red circle", printed), row("red circle", scene(7, size=128))]
    assert kept(rule, rows) == [False, True]


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"unknown curation rule \[rules.nope\]"):
        parse_config({"rules": {"nope": {}}})
    with pytest.raises(ConfigError, match="unknown key 'min_word' in \\[rules.text_length\\]"):
        parse_config({"rules": {"text_length": {"min_word": 3}}})
    with pytest.raises(ConfigError, match=r"unknown table \[rule\]"):
        parse_config({"rule": {}})
    with pytest.raises(ConfigError, match=r"\[rules.text_length\] min_words = 'two' is not of type int"):
        parse_config({"rules": {"text_length": {"min_words": "two"}}})
    with pytest.raises(ConfigError, match=r"unknown key 'batch' in \[run\]"):
        parse_config({"run": {"batch": 3}})
    with pytest.raises(ConfigError, match="clip_score needs exactly one"):
        parse_config({"rules": {"clip_score": {"model": "x"}}})
    cfg = parse_config({"rules": {"text_length": {"min_words": 2}, "image_size": {}}}, only="image_size")
    assert [n for n, _ in cfg.rules] == ["image_size"]


def test_missing_score_model_is_one_line(tmp_path):
    from vlmkit.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        build_rules(parse_config({"rules": {"clip_score": {"model": str(tmp_path / "none"), "threshold": 0.1}}}))
    with pytest.raises(CheckpointError, match="has no config.json"):  # a folder that is no checkpoint
        build_rules(parse_config({"rules": {"embed_dedup": {"model": str(tmp_path)}}}))


def test_clip_score_with_a_coca_checkpoint(tmp_path):
    from vlmkit.weights.create import create_checkpoint

    coca = str(create_checkpoint(tmp_path / "coca", "debug", family="coca"))
    rows = [row(f"caption {i}", scene(i), i) for i in range(4)]
    scores = make("clip_score", model=coca, threshold=0.0).score_batch(rows)
    assert len(scores) == 4 and all(-1.0 <= s <= 1.0 for s in scores) and len(set(scores)) == 4
