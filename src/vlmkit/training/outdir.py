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


@contextlib.contextmanager
def hold_run_folder(out: Path, info: DistInfo):
    """Rank 0 holds the lock of `out` (and cleans it) for the block; every rank raises if it fails."""
    lock, error = RunLock(out), None
    if info.is_main:
        try:
            lock.acquire()
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
    """Decorator of a trainer's ``run(cfg, ...)``: validate `cfg`, then run it while holding the lock
    of ``cfg.out_dir`` (see the module docstring), before it writes anything there."""

    @functools.wraps(run_fn)
    def run(cfg, *args, **kwargs):
        cfg.validate()
        info = init_distributed(cfg.parallel)
        with hold_run_folder(Path(cfg.out_dir), info):
            return run_fn(cfg, *args, **kwargs)

    return run


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
