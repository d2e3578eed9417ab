"""Writing outputs without destroying user data: target checks and atomic folders and files.

Rules every command that writes follows (see README, "Errors and safety"):

* a target that is the current folder or one of its ancestors (`.`, `..`, `~` from below) is refused;
* a target folder that exists and is not empty, or a target file that exists, is refused unless
  the caller passes `overwrite=True` (the CLI's `--force`);
* even with `overwrite=True` nothing is deleted that this write did not create: files of the same
  name are replaced, every other file stays;
* the output appears complete or not at all: it is built in a hidden temp folder beside the target
  and renamed into place (a single rename when the target is absent or empty; with overwrite,
  one atomic rename per file, so a crash never leaves a half-written file);
* the temp name says who made it, ``.NAME.tmp-PID-HOST-xxxxxxxx`` (HOST: a hash of the host name),
  so a write killed before its rename (SIGKILL, power loss) leaves a leftover the next write to
  the same target recognises: one of this pattern, made on this host by a process that no longer
  runs (``os.kill(pid, 0)``), is removed. Nothing else is: not another target's, not a live
  process's, not one from another host (its PID means nothing here), not a name of another shape.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path

from vlmkit.errors import OutputError


_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _temp_prefix(target: Path) -> str:
    """Prefix of the temp file / folder a write of `target` makes beside it (module docstring)."""
    return f".{target.name}.tmp-{os.getpid()}-{_HOST}-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, ValueError):
        return False  # not a possible PID
    return pid > 0


def remove_dead_temps(target: str | os.PathLike) -> list[Path]:
    """Remove the temp files / folders that writes of `target` killed before their rename left
    beside it (module docstring: ours, for this target, of a dead process on this host). Best
    effort: a leftover that cannot be removed stays (it is hidden and blocks nothing)."""
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.tmp-") + r"(\d+)-([0-9a-f]{8})-[a-z0-9_]+")
    try:
        entries = list(target.parent.iterdir())
    except OSError:  # no parent folder yet: nothing left there
        return []
    removed = []
    for p in entries:
        m = pattern.fullmatch(p.name)
        if m is None or m[2] != _HOST or _running(int(m[1])) or p.is_symlink():
            continue
        with contextlib.suppress(OSError):  # a concurrent cleaner may have removed it first
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


def _refuse_cwd_or_ancestor(path: Path) -> None:
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"refusing to write into {path}: it is the current folder or one of its parents")


def _parent_must_be_folder(path: Path) -> None:
    """ENOTDIR as one line: some existing ancestor of `path` is a file."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
            return


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse `path` as an output folder unless writing there can destroy nothing unasked.

    Raises OutputError: `path` is `.`/`..`/an ancestor of the current folder, an existing file, under
    a file, or a non-empty folder while `overwrite` is False.
    """
    path = Path(path)
    _refuse_cwd_or_ancestor(path)
    _parent_must_be_folder(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output folder {path} is an existing file; choose another path")
    if not overwrite and path.is_dir() and any(path.iterdir()):
        raise OutputError(f"output folder {path} is not empty; pass --force to write into it "
                          "(same-named files are replaced, other files are kept)")
    return path


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse `path` as an output file if it is a folder, under a file, or exists (without overwrite)."""
    path = Path(path)
    _parent_must_be_folder(path)
    if path.is_dir():
        raise OutputError(f"output file {path} is an existing folder")
    if path.exists() and not overwrite:
        raise OutputError(f"output file {path} exists; pass --force to replace it")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Write `data` to a temp file beside `path` and rename it onto `path` (never half-written)."""
    path = check_output_file(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_folder(final: str | os.PathLike, overwrite: bool = True, stale: Iterable[str] = ()):
    """Context manager yielding a temp folder beside `final`, moved onto it only on success.

    `final` absent or empty: one rename. `final` holding files: refused unless `overwrite`, then the
    new files replace same-named ones one rename each and every other file is kept. `stale` lists
    glob patterns of files this writer owns that would be wrong beside the new ones (e.g. the
    shard index of an earlier sharded save when writing a single file); if such a file exists and
    is not replaced, the write is refused rather than leaving an inconsistent folder.
    """
    return _AtomicFolder(Path(final), overwrite, tuple(stale))


class _AtomicFolder:
    def __init__(self, final: Path, overwrite: bool, stale: tuple[str, ...]):
        self.final, self.overwrite, self.stale = final, overwrite, stale

    def __enter__(self) -> Path:
        check_output_dir(self.final, self.overwrite)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(self.final)
        self.tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(self.final), dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._commit()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)  # our own temp folder only
        if isinstance(exc, OSError) and isinstance(exc.filename, str) and exc.filename.startswith(str(self.tmp)):
            # Name the file the user asked for, not our hidden temp folder (which is gone now).
            exc.filename = str(self.final) + exc.filename[len(str(self.tmp)):]
        return False

    def _commit(self) -> None:
        if not self.final.is_symlink():  # a linked folder stays where the link points: merge into it
            try:
                os.rmdir(self.final)  # only succeeds on an empty folder, which holds nothing to lose
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        if not os.path.lexists(self.final):
            os.replace(self.tmp, self.final)
            return
        if not self.overwrite and any(self.final.iterdir()):  # it filled up while we were writing
            raise OutputError(f"output folder {self.final} is not empty; pass --force to write into it")
        self._check_stale()
        _merge(self.tmp, self.final, dry_run=True)  # every conflict found before anything moves
        _merge(self.tmp, self.final, dry_run=False)

    def _check_stale(self) -> None:
        for pattern in self.stale:
            for old in self.final.glob(pattern):
                if not (self.tmp / old.relative_to(self.final)).exists():
                    raise OutputError(f"{old} is left from an earlier write and would not match the new "
                                      f"files; remove it or write to an empty folder")


def _merge(src: Path, dst: Path, dry_run: bool) -> None:
    """Move every file of `src` onto the same relative path under `dst` (os.replace each);
    `dry_run` only checks that no file would have to replace a folder or the reverse."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir():
            if target.exists() and not target.is_dir():
                raise OutputError(f"cannot write folder {target}: a file of that name exists")
            if not dry_run:
                target.mkdir(exist_ok=True)
            if target.is_dir() or not dry_run:
                _merge(entry, target, dry_run)
        elif target.is_dir():
            raise OutputError(f"cannot write file {target}: a folder of that name exists")
        elif not dry_run:
            os.replace(entry, target)
