"""The run folder (`--out`) of a training run: one run at a time, no leftovers, one metrics row per step.

- Lock. ``OUT/.vlmkit.lock`` is held with `fcntl.flock` for the whole run by rank 0 (the only
  rank that writes into OUT; other ranks learn the outcome through a collective, so they neither
  block on the file nor run on when rank 0 stops). The file names the holder's PID and host, so
  a second run stops with one line naming them. The kernel drops a flock when its process dies
  (SIGKILL included), so a lock left by a dead run is simply free: it is taken over, and said so.
  The file is never deleted (deleting a locked file lets two runs lock two different files), only
  emptied on a clean exit.
- Leftovers. A run killed while writing a checkpoint, the export or its tokenizer leaves the temp
  folder of `atomic_folder` (``.step_000120.tmp-PID-HOST-k3j2x9_a``, ``.export.tmp-...``) and maybe
  ``checkpoints/.latest.tmp`` or ``.metrics.jsonl.tmp-PID``; once the lock is held nobody else can
  be writing them, so they are removed. Only names of exactly these patterns are touched.
- What --out may be (`check_out_before_lock`, `check_out_after_lock`): absent or empty (a new
  run); a run folder of ours (it holds ``.vlmkit.lock``, ``checkpoints/`` or ``metrics.jsonl``)
  with checkpoints, only with --resume (without it the new run's checkpoints, `latest` and
  metrics would mix with the old ones; --force does not change that); a run folder without
  checkpoints (a run stopped before its first one): started afresh, its metrics rows dropped and
  its tokenizer trained again (`reuse_built_tokenizer`); any other non-empty folder only with
  --force (our files -- config.json, metrics.jsonl, tokenizer/, checkpoints/, export/, the lock --
  are written beside the user's, same-named ones replaced).
- Metrics. Each checkpoint records the size of ``metrics.jsonl`` when it was written; a resume cuts
  the file back to that size (`trim_metrics`), so the replayed steps are not logged twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from vlmkit.errors import ConfigError
from vlmkit.training.parallelize import DistInfo, gather_objects, init_distributed

LOCK_NAME = ".vlmkit.lock"
METRICS_NAME = "metrics.jsonl"
# The temp / moved-aside names `atomic_folder` gives to the folders a run writes, and the temp
# files of `latest` (in checkpoints/) and of the metrics log (`trim_metrics`).
STALE_DIR = re.compile(r"\.(step_\d+|export|tokenizer)\.(tmp|old)-[A-Za-z0-9_-]+")
STALE_FILE = re.compile(r"\.latest\.tmp|\.metrics\.jsonl\.tmp-\d+")


def _note(message: str) -> None:
    print(f"vlmkit: note: {message}", file=sys.stderr, flush=True)


def _holder(fd: int) -> str:
    """'pid P on host H' from the lock file (waits briefly: the holder writes it right after locking)."""
    for _ in range(20):
        raw = os.pread(fd, 4096, 0)
        if raw.strip():
            try:
                info = json.loads(raw)
                return f"pid {int(info['pid'])} on {info['host']}"
            except (ValueError, KeyError, TypeError):
                return f"unreadable holder {raw[:80]!r}"
        time.sleep(0.05)
    return "an unknown pid"


class RunLock:
    """Exclusive flock on ``OUT/.vlmkit.lock``; `acquire` raises ConfigError naming the holder."""

    def __init__(self, out: Path):
        self.out, self.path, self.fd = out, out / LOCK_NAME, None

    def acquire(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError(f"--out {self.out}: cannot create the run folder or its lock ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ConfigError(f"--out {self.out} is in use by another training run ({holder}, lock "
                              f"{self.path}); wait for it to finish or choose another --out") from None
        previous = os.pread(fd, 4096, 0)
        if previous.strip():
            _note(f"taking over the lock {self.path} left by a run that died ({_holder(fd)}, no longer running)")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
            os.fsync(fd)
        except OSError as e:  # e.g. a full disk
            os.close(fd)
            raise ConfigError(f"cannot write the lock {self.path} ({e.strerror})") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # empty = released cleanly (a non-empty free lock = a dead run)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def remove_stale_temp(out: Path) -> list[Path]:
    """Remove the temp checkpoint/export folders of an interrupted run (call with the lock held)."""
    removed = []
    for folder in (out, out / "checkpoints"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if STALE_DIR.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(p)
            elif STALE_FILE.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
    if removed:
        _note(f"removed {len(removed)} temp file(s) of an interrupted run: {', '.join(p.name for p in removed)}")
    return removed


RUN_MARKERS = (LOCK_NAME, "checkpoints", METRICS_NAME)  # what only a run folder of ours holds


def check_out_before_lock(out: Path, force: bool) -> None:
    """Refuse a non-empty --out that is no run folder of ours unless `force` (before the lock file
    is made in it; module docstring)."""
    if not out.is_dir() or any((out / m).exists() for m in RUN_MARKERS) or force:
        return
    if any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty and holds no training run (no {LOCK_NAME}, checkpoints/ "
                          f"or {METRICS_NAME}); choose a new --out, or pass --force to write the run's "
                          "files beside yours (same-named files such as config.json are replaced)")


def check_out_after_lock(out: Path, resume: bool) -> None:
    """Refuse to start a new run over the checkpoints of an earlier one (with the lock held, so a
    live run is reported as such first)."""
    root = out / "checkpoints"
    if resume or not root.is_dir():
        return
    found = sorted(p.name for p in root.iterdir() if p.name == "latest" or p.name.startswith("step_"))
    if found:
        raise ConfigError(f"--out {out} already has checkpoints of a training run ({', '.join(found[-2:])}); "
                          "pass --resume to continue it, or choose a new --out (even with --force a new "
                          "run is not started there: its checkpoints would mix with the old ones)")


@contextlib.contextmanager
def hold_run_folder(out: Path, info: DistInfo, *, resume: bool | None = None, force: bool = False):
    """Rank 0 holds the lock of `out` (and cleans it) for the block; every rank raises if it fails.
    With `resume` given (True/False), `out` is first checked as a trainer's --out (module
    docstring; `force` lets a non-empty foreign folder be used); None skips those checks."""
    lock, error = RunLock(out), None
    if info.is_main:
        try:
            if resume is not None:
                check_out_before_lock(out, force)
            lock.acquire()
            if resume is not None:
                check_out_after_lock(out, resume)
            remove_stale_temp(out)
        except ConfigError as e:
            error = str(e)
        except OSError as e:  # a temp folder that cannot be removed
            error = f"cannot clean {out} of an interrupted run's temp files ({e.strerror}: {e.filename})"
    error = gather_objects(error)[0]  # collective: the other ranks wait here for rank 0's outcome
    if error is not None:
        lock.release()
        raise ConfigError(error)
    try:
        yield
    finally:
        lock.release()


def locked_run(run_fn):
    """Decorator of a trainer's ``run(cfg, *, resume=False, ...)``: validate `cfg`, check
    ``cfg.out_dir`` (what --out may be, see the module docstring; the wrapper takes `force=False`,
    the CLI's --force, which lets a non-empty folder that is no run folder be used), then run while
    holding its lock, before anything is written there."""

    @functools.wraps(run_fn)
    def run(cfg, *args, force: bool = False, **kwargs):
        cfg.validate()
        info = init_distributed(cfg.parallel)
        with hold_run_folder(Path(cfg.out_dir), info, resume=bool(kwargs.get("resume")), force=force):
            return run_fn(cfg, *args, **kwargs)

    return run


def reuse_built_tokenizer(out: Path) -> bool:
    """Whether the tokenizer a run trained into OUT/tokenizer is reused: only when the run resumes a
    checkpoint (trained with it). A run starting afresh where an earlier attempt stopped before
    its first checkpoint trains it again (from this run's data, which may differ)."""
    return (out / "tokenizer" / "tokenizer.json").is_file() and (out / "checkpoints" / "latest").is_file()


def _replace_text(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: a kill leaves the old or the new file, never half of one


def trim_metrics(path: Path, size: int | None, step: int) -> None:
    """Cut the metrics log back to the first `size` bytes (what existed when the resumed checkpoint
    was written), or, for a checkpoint without that record, to the rows of steps <= `step`."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if size is not None and size <= len(data) and (size == 0 or data[size - 1:size] == b"\n"):
        kept = data[:size]
    else:
        kept = b"".join(line for line in data.splitlines(keepends=True) if _row_step(line) <= step)
    if kept != data:
        _replace_text(path, kept)


def _row_step(line: bytes) -> float:
    try:
        row = json.loads(line)
        return row["step"] if isinstance(row, dict) and isinstance(row.get("step"), int) else float("inf")
    except ValueError:
        return float("inf")  # a half-written last row: dropped
