"""Faults for `vlmkit train` / `vlmkit train-contrastive`: stale temp folders, SIGKILL inside the
checkpoint write (a forked child that kills itself from a patched writer) and then resume, disk full
(a 3 MiB tmpfs where the machine allows mounting one, and a patched writer raising ENOSPC / EACCES /
EROFS), resume with another config, broken trainer state, bad manifests. Shared helpers in
bad_inputs_training_common.py.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

import vlmkit.training.checkpoint as ckpt_mod
from vlmkit.cli import main
from vlmkit.training.outdir import LOCK_NAME
from vlmkit.weights.safetensors_io import atomic_folder

from tests.integration.bad_inputs_training_common import (  # noqa: F401 - fixtures reference, stopped
    COMMANDS, argv, tree, call, assert_one_line_error, metric_rows, weights, assert_same_as,
    in_forked_child, _run_killed, reference, stopped,
)

# --------------------------------------------------------------------------- leftovers and SIGKILL


def test_stale_temp_folders_are_removed_and_nothing_else(tmp_path, capsys, reference):
    out = tmp_path / "out"
    assert main(argv("train", out, "--stop_after", "2")) == 0
    root = out / "checkpoints"
    abandoned = atomic_folder(ckpt_mod.step_dir(root, 4)).__enter__()  # as a kill mid-write leaves it
    (abandoned / "model.safetensors").write_bytes(b"half a file")
    (root / ".latest.tmp").write_text("step_000004")
    foreign = [root / ".step_000004.tmp-not ours", root / "notes.txt", out / ".export.tmpfoo", out / "mine"]
    for p in foreign:
        p.mkdir() if p.name in ("mine", ".export.tmpfoo") else p.write_text("user file")
    capsys.readouterr()
    rc, _, err = call(argv("train", out, "--resume"), capsys)
    assert rc == 0 and abandoned.name in err and "removed 2 temp file(s)" in err
    assert not abandoned.exists() and not (root / ".latest.tmp").exists()
    assert all(p.exists() for p in foreign)
    assert_same_as(reference["train"], out)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fresh_start_trains_the_tokenizer_again(tmp_path, capsys, reference, command):
    """An attempt that stopped before its first checkpoint left tokenizer/ (here: not this run's):
    the fresh start trains it again from this run's data instead of reusing it."""
    out = tmp_path / "out"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer.json").write_text('{"model": "from other data"}')
    (out / LOCK_NAME).write_text("")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    rc, _, err = call(argv(command, out), capsys)
    assert rc == 0, err
    assert_same_as(reference[command], out)


KILL_POINTS = {
    "model file of checkpoint 2": (ckpt_mod, "save_file", lambda n, *a: n == 4),
    "optimizer file of checkpoint 2": (ckpt_mod, "save_file", lambda n, *a: n == 5),
    "before latest names checkpoint 2": (os, "replace", lambda n, src, dst: Path(dst).name == "latest"
                                         and Path(src).read_text() == "step_000004"),
}


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_inside_a_checkpoint_write_then_resume_is_exact(tmp_path, capsys, reference, point):
    out = tmp_path / "out"
    assert in_forked_child(_run_killed, argv("train", out), *KILL_POINTS[point]) == -signal.SIGKILL
    assert ckpt_mod.latest_checkpoint(out / "checkpoints").name == "step_000002"
    steps = [r["step"] for r in metric_rows(out) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # logged past the last complete checkpoint
    rc, _, err = call(argv("train", out, "--resume"), capsys)
    assert rc == 0 and "Traceback" not in err
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert_same_as(reference["train"], out)


def test_sigkill_mid_step_contrastive_then_resume_is_exact(tmp_path, capsys, reference):
    out = tmp_path / "out"
    from vlmkit.training.contrastive import ContrastiveTrainer

    kill = (ContrastiveTrainer, "train_step", lambda n, *a: n == 4)  # step 4: after checkpoint 2, before 4
    assert in_forked_child(_run_killed, argv("train-contrastive", out), *kill) == -signal.SIGKILL
    assert [r["step"] for r in metric_rows(out) if "loss" in r] == [1, 2, 3]
    rc, _, err = call(argv("train-contrastive", out, "--resume"), capsys)
    assert rc == 0 and "Traceback" not in err
    assert_same_as(reference["train-contrastive"], out)


@pytest.mark.parametrize("point,logged", [("first checkpoint", [1, 2]), ("tokenizer", [])])
def test_rerun_after_a_kill_before_any_checkpoint_starts_afresh(tmp_path, capsys, reference, point, logged):
    import vlmkit.data.tokenizer_build as tok_build

    out = tmp_path / "out"
    kill = {"first checkpoint": (ckpt_mod, "save_file", lambda n, *a: n == 1),
            "tokenizer": (tok_build, "_config_files", lambda n, *a: True)}[point]  # tokenizer.json written
    assert in_forked_child(_run_killed, argv("train", out), *kill) == -signal.SIGKILL
    if point == "tokenizer":  # only the tokenizer's temp folder, half written
        assert not (out / "tokenizer").exists() and not (out / "metrics.jsonl").exists()
    else:
        assert [r["step"] for r in metric_rows(out) if "loss" in r] == logged
    rc, _, err = call(argv("train", out), capsys)  # no checkpoint: a fresh run, no --resume needed
    assert rc == 0 and "removed 1 temp file(s)" in err
    assert_same_as(reference["train"], out)


# --------------------------------------------------------------------------- checkpoint write failures


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS], ids=errno.errorcode.get)
def test_checkpoint_write_failure_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch,
                                                                           reference, code):
    out = tmp_path / "out"
    real, calls = ckpt_mod.save_file, []

    def failing(tensors, filename, *a, **k):
        calls.append(filename)
        if len(calls) == 5:  # checkpoint 2's optimizer file
            raise OSError(code, os.strerror(code), filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(ckpt_mod, "save_file", failing)
    rc, _, err = call(argv("train", out), capsys)
    assert_one_line_error(rc, err, "cannot write checkpoint", os.strerror(code), "step_000004",
                          "optimizer.safetensors", "unchanged")
    assert ckpt_mod.latest_checkpoint(out / "checkpoints").name == "step_000002"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_000002"]
    monkeypatch.setattr(ckpt_mod, "save_file", real)
    assert main(argv("train", out, "--resume")) == 0
    assert_same_as(reference["train"], out)


def test_disk_full_on_a_small_tmpfs(tmp_path, capsys, reference):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip() or mounted.returncode}")
    try:
        out = mnt / "out"  # one 2.1 MB checkpoint fits, the second does not
        rc, _, err = call(argv("train", out), capsys)
        assert_one_line_error(rc, err, "cannot write checkpoint", "step_000004", "unchanged")
        assert "No space left on device" in err or "os error 28" in err
        assert ckpt_mod.latest_checkpoint(out / "checkpoints").name == "step_000002"
        assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")] == []
        assert weights(out).keys() == weights(reference["train"]).keys()  # still whole
    finally:
        gc.collect()  # safetensors tensors may map files of the mount
        subprocess.run(["umount", "-l", str(mnt)], check=True)  # lazy: detached now even if still mapped


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("command,flags,message", [
    ("train", ["--model.image_size", "64"], "was trained with vision.image_size=32, this run has 64"),
    ("train", ["--lora.enabled"], "was trained with lora.enabled=false, this run has true"),
    ("train", ["--freeze.decoder", "true"], "was trained with freeze.decoder=false, this run has true"),
    ("train-contrastive", ["--model.contrastive_loss", "softmax"],
     'was trained with contrastive_loss="sigmoid", this run has "softmax"'),
])
def test_resume_with_another_config_names_the_field(stopped, capsys, command, flags, message):
    out = stopped[command]
    before = tree(out)
    rc, _, err = call(argv(command, out, "--resume", *flags), capsys)
    assert_one_line_error(rc, err, "resume: checkpoint", "step_000002", message)
    assert tree(out) == before


def test_resume_may_change_what_does_not_shape_the_model(stopped, capsys, reference):
    rc, _, err = call(argv("train", stopped["train"], "--resume", "--log_every", "3", "--lora.dropout", "0.5"), capsys)
    assert rc == 0, err
    assert_same_as(reference["train"], stopped["train"])  # lora.dropout is unused with LoRA off


def test_resume_of_an_older_checkpoint_names_the_parameter(stopped, capsys):
    out = stopped["train"]
    state_file = out / "checkpoints" / "step_000002" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["model_config"]  # as written before model configs were recorded
    state_file.write_text(json.dumps(state))
    rc, _, err = call(argv("train", out, "--resume", "--model.image_size", "64"), capsys)
    assert_one_line_error(rc, err, "resume: checkpoint", "vision_tower.", "of shape")


BAD_STATES = {
    "a list": (lambda s: [s], "must hold a JSON object, got a list"),
    "no step": (lambda s: {k: v for k, v in s.items() if k != "step"}, "lacks the key 'step'"),
    "no data": (lambda s: {k: v for k, v in s.items() if k != "data"}, "lacks the key 'data'"),
    "step a string": (lambda s: s | {"step": "2"}, "'step' must be a JSON integer, got string"),
    "losses a string": (lambda s: s | {"losses": "low"}, "'losses' must be a JSON list"),
    "losses not numbers": (lambda s: s | {"losses": ["a"]}, "'losses' must be a list of numbers"),
    "two data states": (lambda s: s | {"data": s["data"] * 2}, "do not fit together"),
    "optimizer without groups": (lambda s: s | {"optimizer": {}}, "'param_groups' list"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_trainer_state_is_one_line_naming_file_and_key(stopped, capsys, case):
    out = stopped["train"]
    state_file = out / "checkpoints" / "step_000002" / "trainer_state.json"
    edit, message = BAD_STATES[case]
    state_file.write_text(json.dumps(edit(json.loads(state_file.read_text()))))
    before = tree(out)
    rc, _, err = call(argv("train", out, "--resume"), capsys)
    assert_one_line_error(rc, err, str(state_file), message)
    assert tree(out) == before


@pytest.mark.parametrize("damage,message", [
    ("state_not_json", "cannot read"),
    ("no_model_file", "no model.safetensors"),
    ("truncated_model_file", "cannot read"),
    ("latest_names_missing", "which is missing or incomplete"),
    ("latest_escapes", "should name a step_NNNNNN folder"),
])
def test_damaged_checkpoint_folder_is_one_line(stopped, capsys, damage, message):
    out = stopped["train-contrastive"]
    folder = out / "checkpoints" / "step_000002"
    if damage == "state_not_json":
        (folder / "trainer_state.json").write_text("{")
    elif damage == "no_model_file":
        (folder / "model.safetensors").unlink()
    elif damage == "truncated_model_file":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (out / "checkpoints" / "latest").write_text("step_000009" if damage == "latest_names_missing" else "../..")
    before = tree(out)
    rc, _, err = call(argv("train-contrastive", out, "--resume"), capsys)
    assert_one_line_error(rc, err, message)
    assert tree(out) == before


# --------------------------------------------------------------------------- manifests


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "red.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


GOOD_ROW = {"image": "red.png", "prefix": "caption en", "suffix": "a red square"}
GOOD_PAIR = {"image": "red.png", "caption": "a red square"}

BAD_MANIFEST_ROWS = {
    "not json": (b"{oops", "is not valid JSON"),
    "not an object": (b"[1, 2]", "is not a JSON object"),
    "bad utf-8": (b'{"image": "red.png", "prefix": "\xff", "suffix": "x"}', "is not valid JSON"),
    "prefix a number": (json.dumps(GOOD_ROW | {"prefix": 3}).encode(), 'needs "prefix" as a string, got 3'),
    "no suffix": (json.dumps({"image": "red.png", "prefix": "p"}).encode(), 'needs "suffix" as a string'),
    "image a number": (json.dumps(GOOD_ROW | {"image": 7}).encode(), 'needs "image" as a path or a list'),
    "empty suffix": (json.dumps(GOOD_ROW | {"suffix": " "}).encode(), 'has an empty "suffix"'),
    "missing image": (json.dumps(GOOD_ROW | {"image": "gone.png"}).encode(), "gone.png, which does not exist"),
    "unreadable image": (json.dumps(GOOD_ROW | {"image": "broken.png"}).encode(), "broken.png, which cannot be read"),
}


BAD_PAIR_ROWS = {
    "not json": (b"{oops", "is not JSON"),
    "not an object": (b'"just a string"', "is not a JSON object"),
    "no caption": (json.dumps({"image": "red.png"}).encode(), 'needs an "image" path and a "caption"'),
    "missing image": (json.dumps(GOOD_PAIR | {"image": "gone.png"}).encode(), "gone.png, which does not exist"),
}
MANIFEST_CASES = [("train", GOOD_ROW, case, *BAD_MANIFEST_ROWS[case]) for case in sorted(BAD_MANIFEST_ROWS)] + [
    ("train-contrastive", GOOD_PAIR, case, *BAD_PAIR_ROWS[case]) for case in sorted(BAD_PAIR_ROWS)]


@pytest.mark.parametrize("command,good,case,bad,message", MANIFEST_CASES, ids=[f"{c[0]}-{c[2]}" for c in MANIFEST_CASES])
def test_bad_manifest_row_names_file_and_line(tmp_path, capsys, images, command, good, case, bad, message):
    manifest = images / "m.jsonl"
    manifest.write_bytes(json.dumps(good).encode() + b"\n\n" + bad + b"\n")  # the bad row is line 3
    out = tmp_path / "out"
    before = tree(tmp_path, skip=out)
    rc, _, err = call(argv(command, out, "--data", str(manifest)), capsys)
    line = assert_one_line_error(rc, err, f"{manifest}:3 ", message)
    assert ("--data.bad_rows skip" in line) == (command == "train")
    assert tree(tmp_path, skip=out) == before


def test_bad_rows_skip_trains_on_the_rest(tmp_path, capsys, images):
    manifest = images / "m.jsonl"
    manifest.write_text("\n".join([json.dumps(GOOD_ROW)] * 8 + ["[1]"]) + "\n")
    rc, out_text, err = call(argv("train", tmp_path / "out", "--data", str(manifest), "--data.bad_rows", "skip"), capsys)
    assert rc == 0, err
    assert "data: skipped 1 bad rows" in out_text


@pytest.mark.parametrize("case,message", [
    ("absent", "m.jsonl (No such file or directory)"),
    ("empty", "m.jsonl has no text"),
    ("bad eval row", "e.jsonl:1 is not a JSON object"),
])
def test_unusable_training_manifests(tmp_path, capsys, images, case, message):
    manifest, extra = images / "m.jsonl", []
    if case == "empty":
        manifest.write_text("\n")
    elif case == "bad eval row":
        manifest.write_text("\n".join([json.dumps(GOOD_ROW)] * 8) + "\n")
        (images / "e.jsonl").write_text("[1]\n")
        extra = ["--eval-data", str(images / "e.jsonl")]
    rc, _, err = call(argv("train", tmp_path / "out", "--data", str(manifest), *extra), capsys)
    assert_one_line_error(rc, err, message)


def test_contrastive_manifest_of_bad_utf8(tmp_path, capsys, images):
    manifest = images / "pairs.jsonl"
    manifest.write_bytes(b'{"image": "red.png", "caption": "\xff"}\n')
    rc, _, err = call(argv("train-contrastive", tmp_path / "out", "--data", str(manifest)), capsys)
    assert_one_line_error(rc, err, f"cannot read manifest {manifest}")
