"""`vlmkit experiment curation`: the corruption step (deterministic, stated fractions, ground truth
that matches the rows), per-rule precision/recall, the small experiment end to end with its
numbers recomputed from the artefacts, and its one-line errors."""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vlmkit.experiments import curation as exp
from vlmkit.experiments import objectives
from vlmkit.experiments.curation_data import STORE_SIZE, corrupt, read_manifest, to_pairs, upscale, write_manifest
from vlmkit.experiments.curation_eval import rule_scores
from vlmkit.experiments.objectives_data import synth_source


@pytest.fixture(scope="module")
def pool():
    return synth_source(200, 4, seed=3).train


def _bytes(images):
    return [np.asarray(im).tobytes() for im in images]


def test_corruption_is_deterministic_by_seed(pool):
    a, b, c = corrupt(pool, 0), corrupt(pool, 0), corrupt(pool, 1)
    assert a.kinds == b.kinds and a.texts == b.texts and a.sources == b.sources
    assert _bytes(a.images) == _bytes(b.images)
    assert a.kinds != c.kinds


def test_corruption_has_the_stated_fractions_and_true_ground_truth(pool):
    data = corrupt(pool, 0)
    assert Counter(data.kinds) == {"swapped": 60, "near_dup": 40, "printed": 20, "blank": 20, "clean": 60}
    assert data.kinds[0] == "clean"
    for i, kind in enumerate(data.kinds):
        own = np.asarray(upscale(pool.images[i]))
        image = np.asarray(data.images[i])
        if kind == "swapped":
            assert data.texts[i] == pool.texts[data.sources[i]] != pool.texts[i]
            assert np.array_equal(image, own)
        elif kind == "near_dup":
            src = data.sources[i]
            assert src < i and data.kinds[src] == "clean" and data.texts[i] == pool.texts[src]
            assert data.transforms[i] in ("resized", "jpeg", "shifted")
        elif kind == "blank":
            assert image.reshape(-1, 3).std(0).max() == 0 and data.texts[i] == pool.texts[i]
        elif kind == "printed":
            changed = (image != own).any(-1).any(-1)  # rows of pixels that differ
            assert changed[:10].any() and not changed[STORE_SIZE - 8:].any()  # a band at the top
        else:
            assert np.array_equal(image, own) and data.texts[i] == pool.texts[i]


def test_stored_images_come_back_exactly_at_training_size(pool, tmp_path):
    data = corrupt(pool, 0)
    ids, pairs = read_manifest(write_manifest(data, tmp_path))
    assert ids == list(range(len(pool)))
    clean = [i for i, k in enumerate(data.kinds) if k in ("clean", "swapped")]
    assert (pairs.images[clean] == pool.images[clean]).all()
    assert (to_pairs([upscale(pool.images[0])], ["x"]).images[0] == pool.images[0]).all()
    assert json.loads((tmp_path / "truth.json").read_text())["kinds"] == data.kinds


def test_rule_scores_precision_and_recall():
    kinds = ["clean", "swapped", "swapped", "blank", "swapped", "near_dup"]
    scores = rule_scores({"image_uniform": [3], "clip_score": [0, 1, 2]}, kinds)
    assert scores["image_uniform"]["precision"] == 1.0 and scores["image_uniform"]["recall"] == 1.0
    assert scores["clip_score"]["precision"] == pytest.approx(2 / 3)
    assert scores["clip_score"]["recall"] == pytest.approx(2 / 3)
    assert scores["clip_score"]["removed_by_kind"]["clean"] == 1


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("curation") / "run"
    return out, exp.run_curation("small", out, seed=0)


@pytest.mark.slow
def test_small_experiment_end_to_end(small_run):
    out, info = small_run
    assert set(info["arms"]) == {"raw", "curated"}
    for arm in info["arms"].values():
        assert 0 <= arm["zs_unseen"] <= 1 and 0 <= arm["i2t_r1"] <= 1 and 0 <= arm["t2i_r1"] <= 1
        assert len(arm["losses"]) == exp.SIZES["small"].steps
    saved = json.loads((out / "results.json").read_text())
    assert saved["arms"]["curated"]["zs_unseen"] == info["arms"]["curated"]["zs_unseen"]
    assert set(saved["targets"]) == {"curated_beats_raw_zs_unseen", "curated_beats_raw_r1",
                                     "score_filter_swapped_recall_ge_0.8"}
    assert (out / "curation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curated" / "report.html").is_file()


@pytest.mark.slow
def test_small_experiment_rule_numbers_match_the_artefacts(small_run):
    out, info = small_run
    kinds = json.loads((out / "data" / "truth.json").read_text())["kinds"]
    kept = [json.loads(line)["id"] for line in (out / "curated" / "manifest.jsonl").read_text().splitlines()]
    assert info["arms"]["curated"]["pairs"] == len(kept) and info["arms"]["raw"]["pairs"] == len(kinds)
    report = json.loads((out / "curated" / "report.json").read_text())
    rules = info["rules"]
    assert list(rules) == ["image_uniform", "ocr_caption", "clip_score", "phash_dedup"]
    assert sum(r["removed"] for r in rules.values()) + len(kept) == len(kinds)  # each row removed once or kept
    for name, r in rules.items():
        assert report["rules"][name]["removed"] == r["removed"]
        assert sum(r["removed_by_kind"].values()) == r["removed"]
    n_swapped = kinds.count("swapped")
    clip = rules["clip_score"]
    assert clip["recall"] == pytest.approx(clip["removed_by_kind"]["swapped"] / n_swapped)
    assert clip["precision"] == pytest.approx(clip["removed_by_kind"]["swapped"] / clip["removed"])
    assert info["kept_by_kind"] == {k: sum(kinds[i] == k for i in kept) for k in info["kept_by_kind"]}
    assert info["targets"]["score_filter_swapped_recall_ge_0.8"] == (clip["recall"] >= 0.8)
    itm = info["beside_chain"]["itm_score (beside)"]  # measured alone on every raw row
    assert itm["target"] == "swapped" and sum(itm["removed_by_kind"].values()) == itm["removed"] > 0
    assert itm["recall"] == pytest.approx(itm["removed_by_kind"]["swapped"] / n_swapped)
    assert itm["precision"] == pytest.approx(itm["removed_by_kind"]["swapped"] / itm["removed"])
    assert (out / "runs" / "bootstrap_itm" / "export" / "itm_head.safetensors").is_file()
    assert "itm_score (beside)" in info["table"]


def _cli(args: list[str]) -> argparse.Namespace:
    return objectives.add_experiment_arguments(argparse.ArgumentParser()).parse_args(["curation", *args])


@pytest.mark.parametrize("case", ["file", "non_empty", "size", "foreign_curated"])
def test_bad_input_is_one_line(tmp_path, capsys, case):
    out = tmp_path / "out"
    args = ["--out", str(out)]
    if case == "file":
        out.write_text("x")
    elif case == "non_empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "size":
        args += ["--size", "default"]
    else:
        (out / "curated").mkdir(parents=True)
        (out / "curated" / "keep.txt").write_text("mine")
        args += ["--force"]
    assert objectives.run_experiment_args(_cli(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmkit: error: ") and err.count("\n") == 1
    if case == "foreign_curated":
        assert (out / "curated" / "keep.txt").read_text() == "mine"
