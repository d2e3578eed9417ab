"""Helpers shared by the serving tests: test images as data URIs, request bodies, a uvicorn
server in a thread (a subprocess server is `vlmkit.serving.launch.ServerProcess`)."""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager

import httpx
from PIL import Image

from vlmkit.serving.launch import free_port


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
