"""Helpers shared by the serving tests: test images as data URIs, a uvicorn server in a thread,
`vlmkit serve` in a subprocess (polled until /health answers, never a fixed sleep), its RSS."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image(colour="red", x: int = 10) -> Image.Image:
    """64 x 64 of `colour` with a white rectangle at column x."""
    img = Image.new("RGB", (64, 64), colour)
    img.paste("white", (x, 10, x + 20, 40))
    return img


def uri(img: Image.Image | None = None, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    (img or image()).save(buf, format=fmt)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(text="caption en", url=None, **kw) -> dict:
    """A greedy chat request with one text part and one image part."""
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url or uri()}}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0, **kw}


@contextmanager
def serving(pipe, cfg):
    """Yields the base URL (`http://127.0.0.1:PORT/v1`) of `create_app(pipe, cfg)` run by uvicorn
    in a thread; on exit the server shuts down (its lifespan stops the scheduler) and the thread ends."""
    import uvicorn

    from vlmkit.serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(pipe, cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        for _ in range(600):  # until the socket answers /health (or the thread died)
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["status"] == "ok"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "uvicorn did not shut down"


class ServeProcess:
    """`python -m vlmkit serve ARGS` on a free port in a subprocess (output in `log`)."""

    def __init__(self, *args: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "vlmkit", "serve", "--port", str(self.port), *args],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server did not answer /health in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def rss_mb(self) -> float:
        """Resident set size of the server process now, MiB (Linux /proc)."""
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        self.wait_ready()
        return self

    def __exit__(self, *exc):
        self.close()
