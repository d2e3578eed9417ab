"""The server's bad-input corpus, against a real `vlmkit serve` subprocess on the bundled model:
malformed JSON, wrong types, a non-image data URI, a truncated image, image bombs, 100 images,
a 1 MB prompt, clients that disconnect mid-stream (and while queued), a request while the queue
is full. Each gets its status and an OpenAI-shaped error naming the cause; afterwards /health is
ok, nothing is left running, and the server's RSS is back near its level before.

RSS tolerance: the corpus runs once to warm up (first-use allocations of every error path), the
RSS is read, the corpus runs 3 more times, and the RSS may be at most 50 MiB above the reading
(a leak of one decoded bomb or 1 MB prompt per run would exceed it: a 5000 x 5000 RGB image is
72 MiB). Not a timing test: every wait polls a condition."""

import base64
import io
import threading
import time

import pytest
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from tests.integration.bad_inputs_common import png_header  # noqa: E402
from tests.integration.serving_common import body, uri  # noqa: E402
from vlmkit.serving.launch import ServerProcess  # noqa: E402

URL = "/v1/chat/completions"
RSS_TOLERANCE_MB = 50


def _b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _truncated_png() -> str:
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 50).convert("RGB").save(buf, format="PNG")
    return _b64(buf.getvalue()[: len(buf.getvalue()) // 2])


def _many_images(n: int) -> dict:
    content = [{"type": "text", "text": "caption en"}] + [{"type": "image_url", "image_url": {"url": uri()}}] * n
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4}


CORPUS = [  # (name, request body: dict as JSON or raw bytes, status, words the message must contain)
    ("malformed JSON", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 422, "valid dictionary"),
    ("messages is a string", {"messages": "hi"}, 422, "messages: Input should be a valid list"),
    ("max_tokens is text", {**body(), "max_tokens": "ten"}, 422, "max_tokens"),
    ("image_url is a number", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]},
     422, "messages.0.content.0.image_url"),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 422, "role"),
    ("non-image data URI", body(url="data:text/plain;base64,aGVsbG8="), 400, "data URI of type text/plain is not an image"),
    ("truncated image", body(url=_truncated_png()), 400, "truncated"),
    ("image bomb (10^10 pixels declared)", body(url=_b64(png_header(100_000, 100_000))), 413,
     "declares 10,000,000,000 pixels"),
    ("image bomb (5000 x 5000)", body(url=_b64(png_header(5000, 5000))), 413, "5000x5000 pixels"),
    ("100 images", _many_images(100), 400, "100 images in one request"),
    ("1 MB prompt", body("x" * (1 << 20)), 400, "prompt of 1,048,576 characters"),
]


def _post(srv: ServerProcess, payload) -> httpx.Response:
    if isinstance(payload, bytes):
        return httpx.post(srv.url + URL, content=payload, headers={"content-type": "application/json"}, timeout=120)
    return httpx.post(srv.url + URL, json=payload, timeout=120)


def _check(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and words in err["message"], err


def _metric(srv: ServerProcess, name: str) -> float:
    return srv.metrics().get(name, 0.0)


def _poll(cond, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class _Stream:
    """A streamed request read in a thread until the first chunk arrives (or it is refused);
    `close()` then drops the connection mid-stream."""

    def __init__(self, srv: ServerProcess, req: dict):
        self.client = httpx.Client(timeout=300)
        self.started, self.status = threading.Event(), None
        self.thread = threading.Thread(target=self._read, args=(srv, req), daemon=True)
        self.thread.start()

    def _read(self, srv, req) -> None:
        try:
            with self.client.stream("POST", srv.url + URL, json=req) as r:
                self.status = r.status_code
                for _ in r.iter_lines():
                    self.started.set()
        except httpx.HTTPError:
            pass  # closed by us
        finally:
            self.started.set()

    def close(self) -> None:
        self.client.close()
        self.thread.join(60)


def _queue_full_and_disconnects(srv: ServerProcess) -> None:
    """One row, one queue place: A decodes, B waits, C is refused (429); then both clients leave
    and their requests are cancelled (B's while still queued or just admitted)."""
    cancelled = _metric(srv, 'vlmkit_finished_choices_total{reason="cancelled"}')
    long = body("ocr", max_tokens=1800, stream=True)
    a = _Stream(srv, long)
    assert a.started.wait(120) and a.status == 200
    b = _Stream(srv, long)
    _poll(lambda: _metric(srv, "vlmkit_queue_depth") == 1, "B to wait in the queue")
    _check(_post(srv, body(max_tokens=4)), 429, "the queue is full (1 waiting requests)")
    a.close()
    b.close()
    _poll(lambda: _metric(srv, 'vlmkit_finished_choices_total{reason="cancelled"}') == cancelled + 2,
          "both requests to be cancelled")
    _poll(lambda: httpx.get(srv.url + "/health").json()["active_rows"] == 0, "the rows to be freed")


def _run_corpus(srv: ServerProcess) -> None:
    for name, payload, status, words in CORPUS:
        r = _post(srv, payload)
        try:
            _check(r, status, words)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
    _queue_full_and_disconnects(srv)
    assert httpx.get(srv.url + "/health").json() == {"status": "ok", "active_rows": 0}


def test_bad_input_corpus_keeps_the_server_serving(tmp_path):
    args = ("--max-batch", "1", "--max-queue", "1", "--max-len", "2048", "--dtype", "float32")
    with ServerProcess(*args, log=tmp_path / "serve.log") as srv:
        ok = _post(srv, body())
        assert ok.status_code == 200, ok.text
        _run_corpus(srv)  # warm-up: every error path's first-use allocations
        before = srv.rss_mb()
        for _ in range(3):
            _run_corpus(srv)
        after = srv.rss_mb()
        assert _post(srv, body()).json()["choices"][0]["message"]["content"] == ok.json()["choices"][0]["message"][
            "content"]
    print(f"\nserver RSS {before:.0f} MiB after the warm-up corpus, {after:.0f} MiB after 3 more runs "
          f"(tolerance +{RSS_TOLERANCE_MB} MiB)")
    assert after <= before + RSS_TOLERANCE_MB
