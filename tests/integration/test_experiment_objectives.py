"""`vlmkit experiment objectives` end to end at a few-seconds size, its data splits, its scoring
functions and its one-line errors."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmkit.data.tokenizer import Tokenizer
from vlmkit.errors import DataError
from vlmkit.experiments import objectives as exp
from vlmkit.experiments import objectives_eval as ev
from vlmkit.experiments.objectives_data import (FASHION_HELD_OUT, SYNTH_HELD_OUT, colourise, fashion_source,
                                                synth_source)
from vlmkit.models.coca.model import CoCa
from vlmkit.models.common.init import init_weights
from vlmkit.training.collate import build_small_tokenizer
from vlmkit.training.contrastive import tokenize_captions

TINY = exp.ExperimentSize(vision_width=32, vision_layers=1, patch_size=8, width=32, unimodal_layers=1,
                          multimodal_layers=1, steps=4, batch_size=16, n_train=64, n_eval=12)


def _fashion_installed() -> bool:
    try:
        fashion_source(1, 1)
    except DataError:
        return False
    return True


def test_synth_split_never_trains_on_held_out_pairs():
    src = synth_source(200, 20, seed=0)
    held = {f"{c} {s}" for c, s in SYNTH_HELD_OUT}
    assert not any(h in t for t in src.train.texts for h in held)
    assert {src.zs_unseen.class_names[i] for i in src.zs_unseen.labels.tolist()} <= held
    assert len(src.zs_unseen.class_names) == 30  # classified among all pairs, not only the held-out ones
    assert len(set(src.retrieval.texts)) == len(src.retrieval)  # one right text per image
    assert src.train.images.shape[1:] == (3, 32, 32) and src.train.images.dtype == torch.uint8


def test_colourise_tints_the_garment_only():
    garment = np.zeros((1, 28, 28), np.uint8)
    garment[0, 10:18, 10:18] = 255
    out = colourise(garment, ["blue"], np.random.default_rng(0))  # [1, 3, 32, 32]
    inside, corner = out[0, :, 15, 15].int(), out[0, :, 0, 0].int()
    assert inside[2] > 180 and inside[0] < 80  # blue garment
    assert abs(int(corner[0]) - int(corner[2])) < 30 and corner.min() > 150  # light grey background


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    src = synth_source(64, 6, seed=1)
    tok = Tokenizer.from_folder(build_small_tokenizer(sorted(set(src.train.texts)), tmp_path_factory.mktemp("tok"), 512))
    model = init_weights(CoCa(exp.coca_config(TINY, tok, (1.0, 2.0))), seed=0).eval()
    return model, tok, src


def test_likelihood_matrix_scores_each_pair_like_a_single_forward(tiny_model):
    model, tok, src = tiny_model
    texts = src.retrieval.texts[:3]
    _, caps = ev.image_features(model, src.retrieval.images[:2])
    scores = ev.likelihood_matrix(model, tok, caps, texts)  # [2, 3]
    for i in range(2):
        for j, text in enumerate(texts):
            ids, mask = tokenize_captions(tok, [text], model)
            logits = model(ev._pixels(model, src.retrieval.images[i:i + 1]), ids, mask).logits[0, :-1]
            expected = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).sum()
            torch.testing.assert_close(scores[i, j], expected, rtol=1e-4, atol=1e-4)
    assert (scores < 0).all()


def test_experiment_end_to_end_at_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(exp.SIZES, "tiny", TINY)
    data = ("synth", "fashion") if _fashion_installed() else ("synth",)
    results = exp.run_objectives("tiny", tmp_path, data)
    assert list(results) == ["contrastive", "captioning", "coca"]
    for name, r in results.items():
        assert len(r["losses"]) == TINY.steps and r["train_s"] > 0
        for source, m in r["metrics"].items():
            assert 0.0 <= m["zs_unseen"] <= 1.0 and 0.0 <= m["i2t_r1"] <= 1.0 and 0.0 <= m["t2i_r1"] <= 1.0
            assert (m["cider"] is None) == (name == "contrastive")
            assert m["scoring"] == ("likelihood" if name == "captioning" else "embedding")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["results"]["coca"]["metrics"]["synth"]["zs_unseen"] == results["coca"]["metrics"]["synth"]["zs_unseen"]
    printed = capsys.readouterr().out
    assert "| contrastive |" in printed and "n/a" in printed and "synth zs-unseen" in printed
    png = (tmp_path / "objectives.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "coca" / "metrics.jsonl").is_file()


def test_missing_fashion_mnist_is_a_one_line_error(tmp_path, capsys):
    parser = exp.add_experiment_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["objectives", "--size", "small", "--out", str(tmp_path), "--data", "fashion",
                              "--fashion-root", str(tmp_path / "nowhere")])
    assert exp.run_experiment_args(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err
    args = parser.parse_args(["objectives", "--data", "mnist", "--out", str(tmp_path)])
    assert exp.run_experiment_args(args) == 2
    assert "synth" in capsys.readouterr().err


def test_fashion_split_if_installed():
    if not _fashion_installed():
        pytest.skip("dataset-fashion-mnist is not installed")
    src = fashion_source(300, 30, seed=0)
    held = {f"{c} {k}" for c, k in FASHION_HELD_OUT}
    assert not any(t.removeprefix("a ") in held for t in src.train.texts)
    assert {src.zs_unseen.class_names[i] for i in src.zs_unseen.labels.tolist()} <= held
    assert len(src.zs_class.class_names) == 10 and len(src.zs_class.templates) == 6
