"""The CLI's one error boundary: every command's failures become one line, or a bug report.

Expected failures exit 2 with one line `vlmkit: error: <cause> (<path>)` on stderr:

* `VlmkitError` (bad images, checkpoints, configs, flags, outputs ...): its own message;
* `OSError` (disk full, permission denied, a path under a file, ...): the system's reason and the
  path (`e.filename`);
* `MemoryError`; JSON or UTF-8 decoding errors from user files.

A closed stdout (`vlmkit info | head -c0`, `>&-`) is not an error: the command stops quietly (exit 0).
Anything else is a bug in vlmkit: its traceback is printed, then one line on how to report it.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Callable

from vlmkit.errors import VlmkitError


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def describe_os_error(e: OSError) -> str:
    """'No space left on device [ENOSPC] (/out/model.safetensors)': the reason, its code, the path(s)."""
    reason = e.strerror or str(e) or type(e).__name__
    code = errno.errorcode.get(e.errno or -1)
    paths = [os.fsdecode(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{reason}{f' [{code}]' if code else ''}" + (f" ({' -> '.join(paths)})" if paths else "")


def _describe(e: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for a bug."""
    if isinstance(e, VlmkitError):
        return str(e)
    if isinstance(e, OSError):
        return describe_os_error(e)
    if isinstance(e, MemoryError):
        return "out of memory (try a smaller model, batch or image, or --dtype bfloat16)"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    if isinstance(e, UnicodeDecodeError):
        return f"a file is not valid UTF-8 text ({e.reason} at byte {e.start})"
    return None


def _is_broken_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush of buffered output cannot fail
    again (and print 'Exception ignored ...') after we have reported or ignored the failure."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):  # stdout is not a real file (tests, closed)
        pass


def _flush_or_silence_stdout() -> None:
    """Flush what the command printed; if stdout itself fails, silence it for good."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()


class _NamedStdout:
    """sys.stdout, except that a failed write or flush names `<stdout>` (a write error has no path)."""

    def __init__(self, stream):
        self._stream = stream

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            if e.filename is None:
                e.filename = "<stdout>"
            raise

    def write(self, text: str) -> int:
        return self._call(self._stream.write, text)

    def flush(self) -> None:
        self._call(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_command(fn: Callable[[], int]) -> int:
    """Run `fn` (a parsed command) inside the boundary; returns the exit code."""
    real_stdout = sys.stdout
    sys.stdout = _NamedStdout(real_stdout) if real_stdout is not None else None
    try:
        return _run(fn)
    finally:
        sys.stdout = real_stdout


def _run(fn: Callable[[], int]) -> int:
    try:
        code = fn()
        if sys.stdout is not None:
            sys.stdout.flush()  # buffered output fails here (EPIPE, ENOSPC on stdout), inside the boundary
        return code
    except KeyboardInterrupt:
        print("vlmkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - this is the boundary: classify; a bug keeps its traceback
        if _is_broken_pipe(e):
            _silence_stdout()
            return 0
        _flush_or_silence_stdout()
        message = _describe(e)
        if message is None:
            from vlmkit import __version__

            traceback.print_exc()
            print(f"vlmkit: internal error ({type(e).__name__}): this is a bug in vlmkit {__version__}; "
                  "please report it to the vlmkit issue tracker with the command line, the output of "
                  "`vlmkit --version` and the traceback above", file=sys.stderr)
            return 1
        print(f"vlmkit: error: {one_line(message)}", file=sys.stderr)
        return 2
