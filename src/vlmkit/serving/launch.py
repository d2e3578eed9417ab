"""`vlmkit serve` in a subprocess on a free port of 127.0.0.1: started, polled until /health
answers (never a fixed sleep), read (metrics, RSS), stopped with SIGTERM. Used by the serving
benchmark and tests; handy for scripts that need a server for a while."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[2]  # the folder holding the vlmkit package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m vlmkit serve --port P ARGS` with OMP_NUM_THREADS=threads; output goes to `log`.

    Use as a context manager (waits until ready; SIGTERM on exit) or call `wait_ready` / `close`.
    """

    def __init__(self, *args: str, log: Path, threads: int = 1):
        self.port, self.log = free_port(), Path(log)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vlmkit", "serve", "--port", str(self.port), *args],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text()[-chars:]

    def wait_ready(self, timeout: float = 300) -> None:
        """Poll /health until it answers 200; RuntimeError (with the log's end) if the process
        exits or `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vlmkit serve exited with code {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"vlmkit serve did not answer /health in {timeout:g} s:\n{self.tail()}")

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples now (name with labels -> value)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                if ln and not ln.startswith("#")}

    def rss_mb(self) -> float:
        """Resident set size of the server process now, MiB (Linux /proc)."""
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc")

    def close(self, timeout: float = 60) -> None:
        """SIGTERM (the server finishes what is in flight), then kill after `timeout` seconds."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ServerProcess:
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()
