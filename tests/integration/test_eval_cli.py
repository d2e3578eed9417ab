"""`vlmkit eval` on a random debug checkpoint and a 5-scene synthetic manifest (wrong answers,
but every stage runs: manifest -> batched generation -> metrics -> table + JSON + JSONL)."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import pytest

from vlmkit.data.synth import SynthConfig, write_dataset
from vlmkit.errors import CheckpointError, DataError
from vlmkit.eval.cli import add_eval_arguments, run_eval_args
from vlmkit.weights.create import create_checkpoint

METRICS = {"caption": {"cider_d", "bleu_4", "exact_match"}, "vqa": {"accuracy", "exact_match"},
           "detect": {"precision_50", "recall_50", "map_50", "map_50_95", "parse_error_rate"},
           "ocr": {"cer", "exact_match"}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    model = create_checkpoint(root / "model", "debug")
    # word_prob 1 and 4 examples per scene: every task shows up in 5 scenes.
    manifest = write_dataset(root / "data", 5, SynthConfig(seed=3, word_prob=1.0,
                                                           task_weights={"caption": 1, "vqa": 1, "detect": 1, "ocr": 1}))
    return model, manifest


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="vlmkit eval")
    add_eval_arguments(parser)
    return run_eval_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize("task", ["caption", "vqa", "detect", "ocr"])
def test_eval_every_task(setup, task, tmp_path, capsys):
    model, manifest = setup
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    mine = [r for r in rows if r["task"] == task]
    # Captions are grouped per image: one example per (image, prefix).
    keys = {(r["image"], r["prefix"]) for r in mine}
    expected = len(keys)
    assert expected >= 1
    out = tmp_path / f"{task}.json"
    rc = _run("--model", str(model), "--data", str(manifest), "--task", task, "--batch-size", "3",
              "--max-new-tokens", "12", "--json", str(out), "--quiet")
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"{task}: {expected} examples" in printed
    assert all(name in printed for name in METRICS[task])
    summary = json.loads(out.read_text())
    assert summary["num_examples"] == expected and set(summary["metrics"]) == METRICS[task]
    assert all(isinstance(v, float) for v in summary["metrics"].values())
    preds = [json.loads(x) for x in (tmp_path / f"{task}.predictions.jsonl").read_text().splitlines()]
    assert len(preds) == expected
    assert Counter(p["prefix"] for p in preds) == Counter(prefix for _, prefix in keys)
    assert all({"prediction", "references", "score", "image"} <= set(p) for p in preds)


def test_eval_limit_and_errors(setup, tmp_path, capsys):
    model, manifest = setup
    assert _run("--model", str(model), "--data", str(manifest), "--task", "vqa", "--limit", "2", "--quiet",
                "--max-new-tokens", "4", "--json", str(tmp_path / "v.json")) == 0
    assert json.loads((tmp_path / "v.json").read_text())["num_examples"] == 2
    only_ocr = tmp_path / "ocr_only.jsonl"
    only_ocr.write_text("".join(x + "\n" for x in manifest.read_text().splitlines() if '"task": "ocr"' in x))
    with pytest.raises(DataError, match="no 'detect' rows"):
        _run("--model", str(model), "--data", str(only_ocr), "--task", "detect")
    with pytest.raises(DataError, match="does not exist"):
        _run("--model", str(model), "--data", str(tmp_path / "nope.jsonl"), "--task", "ocr")
    with pytest.raises(CheckpointError):
        _run("--model", str(tmp_path / "no_model"), "--data", str(manifest), "--task", "ocr")
