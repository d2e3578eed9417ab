"""Bad inputs for `vlmkit train` / `vlmkit train-contrastive` (through `vlmkit.cli.main`): flags and
overrides, output folders, the run lock. Leftovers, SIGKILL, write failures, resume and manifests
are in test_bad_inputs_training_faults.py; shared helpers in bad_inputs_training_common.py.

Each error case asserts exit code 2, exactly one stderr line `vlmkit: error: ...` naming the cause,
no traceback, and that nothing outside the intended output folder changed. Runs are the smoke
recipes at 4 steps (about a second each).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmkit.training.outdir import LOCK_NAME, RunLock, hold_run_folder
from vlmkit.training.parallelize import DistInfo

from tests.integration.bad_inputs_training_common import (  # noqa: F401 - fixtures reference, stopped
    SRC, COMMANDS, argv, tree, call, assert_one_line_error, metric_rows, assert_same_as, reference,
    stopped,
)

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


