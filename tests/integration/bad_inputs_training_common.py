"""Shared helpers and fixtures of the training bad-input corpus: `test_bad_inputs_training.py`
(flags, output folders, the lock) and `test_bad_inputs_training_faults.py` (leftovers, SIGKILL,
checkpoint write failures, resume, manifests).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlmkit.training.checkpoint as ckpt_mod
from vlmkit.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
COMMANDS = {
    "train": ["train", "finetune", "--smoke", "--data.batch_size", "8"],
    "train-contrastive": ["train-contrastive", "siglip", "--smoke"],
}
VOLATILE = ("samples_per_s", "elapsed_s")  # timing columns of metrics.jsonl


def argv(command: str, out: Path, *extra: str, steps: int = 4) -> list[str]:
    return [*COMMANDS[command], "--out", str(out), "--steps", str(steps), "--ckpt_every", "2",
            "--export", "false", *extra]


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (outside `skip`)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and (skip is None or skip not in p.parents):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def call(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlmkit: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def metric_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt_mod.latest_checkpoint(out / "checkpoints") / "model.safetensors"))


def assert_same_as(reference: Path, out: Path) -> None:
    """Same metrics rows (every step once, equal values) and bit-identical final weights."""
    rows = metric_rows(out)
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == sorted(set(steps)), steps
    assert rows == metric_rows(reference)
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted 4-step run of each command, single-threaded like the tests (conftest's
    autouse fixture starts after this module-scoped one; other thread counts sum differently)."""
    runs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for command in COMMANDS:
            out = tmp_path_factory.mktemp("reference") / command
            assert main(argv(command, out)) == 0
            runs[command] = out
    finally:
        torch.set_num_threads(threads)
    return runs


def in_forked_child(target, *args) -> int:
    """Run target(*args) in a forked child; its exit code (negative: killed by that signal)."""
    proc = multiprocessing.get_context("fork").Process(target=target, args=args)
    proc.start()
    proc.join()
    return proc.exitcode


def _run_killed(args: list[str], obj, name: str, when) -> None:
    """Child: replace obj.name by a wrapper that SIGKILLs this process on the call where
    `when(call_number, *args)` is true, then run the command."""
    real, calls = getattr(obj, name), []

    def wrapper(*a, **k):
        calls.append(1)
        if when(len(calls), *a):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    setattr(obj, name, wrapper)
    os._exit(main(args))


@pytest.fixture()
def stopped(tmp_path) -> dict[str, Path]:
    """Runs of each command stopped at step 2 (checkpoint step_000002)."""
    runs = {}
    for command in COMMANDS:
        out = tmp_path / command
        assert main(argv(command, out, "--stop_after", "2")) == 0
        runs[command] = out
    return runs
