"""Bad inputs and faults for `vlmkit train` / `vlmkit train-contrastive`, through `vlmkit.cli.main`.

Each error case asserts exit code 2, exactly one stderr line `vlmkit: error: ...` naming the cause,
no traceback, and that nothing outside the intended output folder changed (for errors found before
training starts: that the output folder holds nothing but its lock). Faults: concurrent runs (a
forked child holding the lock, and a real second process), stale locks, stale temp folders,
SIGKILL inside the checkpoint write (a forked child that kills itself from a patched writer) and
then resume, disk full (a 3 MiB tmpfs where the machine allows mounting one, and a patched writer
raising ENOSPC / EACCES / EROFS), resume with another config, broken trainer state, bad manifests.
Runs are the smoke recipes at 4 steps (about a second each).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vlmkit.training.checkpoint as ckpt_mod
from vlmkit.cli import main
from vlmkit.training.outdir import LOCK_NAME, RunLock, hold_run_folder
from vlmkit.training.parallelize import DistInfo
from vlmkit.weights.safetensors_io import atomic_folder

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


# --------------------------------------------------------------------------- flags and overrides

BAD_FLAGS = [
    ("--ckpt_every", "-1", "ckpt_every must be >= 0"),
    ("--eval_every", "-3", "eval_every must be >= 0"),
    ("--log_every", "0", "log_every must be >= 1"),
    ("--steps", "0", "steps must be >= 1"),
    ("--steps", "-5", "steps must be >= 1"),
    ("--steps", "two", "steps must be int"),
    ("--stop_after", "0", "stop_after must be >= 1"),
    ("--data.batch_size", "0", "data.batch_size must be >= 1"),
    ("--data.grad_accum", "-1", "data.grad_accum must be >= 1"),
    ("--optim.lr", "nan", "optim.lr must be > 0"),
    ("--optim.lr", "inf", "optim.lr must be > 0"),
    ("--optim.lr", "-1e-3", "optim.lr must be > 0"),
    ("--optim.eps", "0", "optim.eps must be > 0"),
    ("--optim.weight_decay", "-0.1", "optim.weight_decay must be >= 0"),
    ("--optim.grad_clip", "-1", "optim.grad_clip must be > 0"),
    ("--optim.warmup_steps", "10", "optim.warmup_steps must be <= steps"),
    ("--optim.betas", "[0.9, 1.5]", "optim.betas must be two numbers in [0, 1)"),
    ("--optim.betas", "[0.9,", "--optim.betas: '[0.9,' is not a valid JSON list"),
    ("--optim.betas", "[0.9, [1]]", "optim.betas must be float"),
    ("--keep_checkpoints", "0", "keep_checkpoints must be >= 1"),
    ("--seed", "-1", "seed must be >= 0"),
    ("--seed", str(2**64), "seed must be <= 2**63 - 1"),
    ("--precision", "fp8", "precision must be one of"),
    ("--optim.lrr", "1", "did you mean 'lr'"),
]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("flag,value,message", BAD_FLAGS, ids=[f"{f}={v}" for f, v, _ in BAD_FLAGS])
def test_bad_flag_values(tmp_path, capsys, command, flag, value, message):
    out = tmp_path / "out"
    rc, _, err = call(argv(command, out, flag, value), capsys)
    assert_one_line_error(rc, err, message)
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("flag,value,message", [
    ("--lora.targets", "(unclosed", "lora.targets: '(unclosed' is not a regular expression"),
    ("--lora.targets", '["a",', "--lora.targets: '[\"a\",' is not a valid JSON list"),
    ("--data.bad_rows", "maybe", "data.bad_rows must be one of"),
])
def test_bad_train_only_flags(tmp_path, capsys, flag, value, message):
    out = tmp_path / "out"
    rc, _, err = call(argv("train", out, flag, value), capsys)
    assert_one_line_error(rc, err, message)
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_that_cannot_be_a_folder(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("user data")
    out = blocker if where == "file" else blocker / "run"
    rc, _, err = call(argv("train", out), capsys)
    assert_one_line_error(rc, err, f"--out {out}", "cannot create the run folder")
    assert blocker.read_text() == "user data"


def _user_folder(path: Path) -> Path:
    (path / "notes").mkdir(parents=True)
    (path / "notes" / "todo.txt").write_text("mine\n")
    (path / "config.json").write_text('{"mine": true}')
    return path


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_out_holding_other_files_is_refused_without_force(tmp_path, capsys, command, resume):
    """A non-empty --out that is no run folder: refused before anything (even the lock) is written."""
    out = _user_folder(tmp_path / "out")
    before = tree(tmp_path)
    rc, _, err = call(argv(command, out, *(["--resume"] if resume else [])), capsys)
    assert_one_line_error(rc, err, f"--out {out} is not empty and holds no training run", "--force")
    assert tree(tmp_path) == before and sorted(p.name for p in out.iterdir()) == ["config.json", "notes"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_force_writes_a_run_beside_the_users_files(tmp_path, capsys, command, reference):
    out = _user_folder(tmp_path / "out")
    rc, _, err = call(argv(command, out, "--force"), capsys)
    assert rc == 0, err
    assert (out / "notes" / "todo.txt").read_text() == "mine\n"  # kept
    assert json.loads((out / "config.json").read_text())["out_dir"] == str(out)  # same name: replaced
    assert_same_as(reference[command], out)


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_new_run_over_checkpoints_is_refused_naming_resume(stopped, capsys, command, force):
    """A run folder with checkpoints and no --resume: refused (also with --force), nothing changed;
    a new run there would mix its checkpoints, `latest` and metrics with the old run's."""
    out = stopped[command]
    before = tree(out)
    rc, _, err = call(argv(command, out, *(["--force"] if force else [])), capsys)
    assert_one_line_error(rc, err, f"--out {out} already has checkpoints of a training run", "step_000002",
                          "pass --resume to continue it")
    assert tree(out) == before


# --------------------------------------------------------------------------- the lock


def _hold_lock(out: Path, ready, done) -> None:
    lock = RunLock(out)
    lock.acquire()
    ready.set()
    done.wait(60)
    lock.release()
    os._exit(0)


@contextlib.contextmanager
def lock_held_elsewhere(out: Path):
    """A forked child holds the lock of `out` for the block; yields its PID."""
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(out, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        yield holder.pid
    finally:
        done.set()
        holder.join()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_second_run_into_a_locked_folder_stops_naming_the_pid(tmp_path, capsys, command):
    out = tmp_path / "out"
    with lock_held_elsewhere(out) as pid:
        stale = out / "checkpoints" / ".step_000002.tmp-abcd1234"
        stale.mkdir(parents=True)  # the holder's own temp folder: must not be touched
        before = tree(tmp_path)
        rc, _, err = call(argv(command, out), capsys)
        assert_one_line_error(rc, err, f"pid {pid} on {socket.gethostname()}", "in use by another training run")
        assert tree(tmp_path) == before and stale.is_dir()


@pytest.mark.distributed
def test_locked_folder_under_torchrun_stops_every_rank(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed")
    out = tmp_path / "out"
    cmd = [str(torchrun), "--nproc-per-node", "2", "-m", "vlmkit.training.cli", *argv("train", out)[1:]]
    with lock_held_elsewhere(out) as pid:
        # Only rank 0 tries the lock; rank 1 learns the outcome from it instead of running on alone.
        result = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                                timeout=600)  # a hang guard, not a speed limit
    # torchrun stops the other rank once one fails, so it may not get to print its own line.
    ours = [line for line in result.stderr.splitlines() if "vlmkit:" in line]
    assert 1 <= len(ours) <= 2 and all(f"in use by another training run (pid {pid} on" in m for m in ours), ours
    assert "exitcode  : 2" in result.stderr and sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_real_concurrent_run_then_its_stale_lock_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    first = subprocess.Popen([sys.executable, "-m", "vlmkit", *argv("train", out, steps=100_000), "--ckpt_every", "0"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / LOCK_NAME
        while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None:
            time.sleep(0.1)
        assert first.poll() is None, first.stderr.read().decode()
        rc, _, err = call(argv("train", out), capsys)
        assert_one_line_error(rc, err, f"pid {first.pid} on")
    finally:
        first.kill()
        first.wait()
    first.stderr.close()
    # SIGKILL left its lock file behind (the kernel dropped the flock) and metrics without a checkpoint.
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
    rc, _, err = call(argv("train", out), capsys)
    assert rc == 0, err
    assert f"taking over the lock {out / LOCK_NAME} left by a run that died (pid {first.pid}" in err
    assert "Traceback" not in err
    assert [r["step"] for r in metric_rows(out) if "loss" in r] == [1, 2, 3, 4]  # the dead run's rows are gone
    assert (out / LOCK_NAME).read_text() == ""  # released


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    rc, _, err = call(argv("train-contrastive", out), capsys)
    assert rc == 0 and "Traceback" not in err
    assert f"left by a run that died (pid {dead.pid}" in err


def test_lock_is_released_after_an_error(tmp_path, capsys):
    out = tmp_path / "out"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("[1]\n")
    rc, _, err = call(argv("train", out, "--data", str(manifest)), capsys)
    assert_one_line_error(rc, err, f"manifest {manifest} has no text")
    lock = RunLock(out)
    lock.acquire()  # free again
    lock.release()


def test_other_ranks_neither_lock_nor_block(tmp_path):
    out = tmp_path / "out"
    lock = RunLock(out)
    lock.acquire()
    try:
        with hold_run_folder(out, DistInfo(rank=1, world_size=1)):  # only rank 0 takes the lock
            pass
    finally:
        lock.release()


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


@pytest.fixture()
def stopped(tmp_path) -> dict[str, Path]:
    """Runs of each command stopped at step 2 (checkpoint step_000002)."""
    runs = {}
    for command in COMMANDS:
        out = tmp_path / command
        assert main(argv(command, out, "--stop_after", "2")) == 0
        runs[command] = out
    return runs


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
