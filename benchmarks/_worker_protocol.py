"""The worker side of `_common.Worker` and a worker's peak RSS, without torch.

Workers that run in another environment (llama.cpp's, which has no torch) import this module
rather than `_common`; `_common` re-exports both names for the others.
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Callable


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    VmHWM (Linux) is per address space and starts afresh at exec; ru_maxrss is not used first
    because Linux carries it over from the parent across fork + exec, so every worker would
    report the parent's peak (e.g. the 1 GiB bandwidth test) if that was larger.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(handlers: dict[str, Callable[..., dict]]) -> None:
    """Worker side of `Worker`: read commands from stdin, answer on stdout until stdin closes.

    Anything the handlers print goes to stderr, so stdout carries only the protocol.
    """
    out, sys.stdout = sys.stdout, sys.stderr
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            reply = handlers[msg.pop("cmd")](**msg)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which stops the run
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
