"""Request timeouts (`--request-timeout`) and SIGTERM: a timed-out request is an OpenAI-shaped
504 (a streamed one ends with the error event) and frees its rows; a `vlmkit serve` subprocess
that gets SIGTERM with a streamed response in flight completes that response, then exits 0.
Nothing here waits a fixed time: every wait polls a condition."""

import json
import signal
import threading

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import vlmkit  # noqa: E402
from tests.integration.serving_common import body  # noqa: E402
from vlmkit.serving.launch import ServerProcess  # noqa: E402
from vlmkit.serving.app import ServeConfig, create_app  # noqa: E402

URL = "/v1/chat/completions"


def _events(lines) -> list[dict | str]:
    return [line if line == "data: [DONE]" else json.loads(line.removeprefix("data: ")) for line in lines if line]


def test_request_timeout_is_504_and_frees_rows():
    # 1 us: every request is past its time when the scheduler next looks (the waiting-queue path;
    # tests/unit/test_scheduler.py covers a request that times out while decoding)
    cfg = ServeConfig(max_batch=2, max_len=256, request_timeout=1e-6)
    with TestClient(create_app(vlmkit.load(dtype="float32"), cfg)) as c:
        r = c.post(URL, json=body(max_tokens=20))
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["type"] == "timeout_error" and err["code"] == "request_timeout"
        assert "--request-timeout of 1e-06 s" in err["message"]
        with c.stream("POST", URL, json=body(max_tokens=20, stream=True)) as r:
            events = _events(r.iter_lines())
        assert r.status_code == 200 and events[-1] == "data: [DONE]"
        assert events[-2]["error"]["type"] == "timeout_error"
        server = c.app.state.server
        assert server.scheduler.active_rows == 0 and c.get("/health").json()["status"] == "ok"


def test_sigterm_finishes_the_in_flight_stream_then_exits_0(tmp_path):
    """The client reads the first chunk, then stops reading until SIGTERM has been sent, so the
    response is in flight when the signal arrives; it must still arrive whole, then the server exits 0."""
    max_tokens = 120
    with ServerProcess("--max-batch", "2", "--max-len", "256", "--dtype", "float32", log=tmp_path / "serve.log") as srv:
        first, signalled, lines = threading.Event(), threading.Event(), []

        def read() -> None:
            req = body("ocr", max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
            with httpx.stream("POST", f"{srv.url}{URL}", json=req, timeout=300) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    first.set()
                    signalled.wait()

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(300), "no first chunk"
        srv.proc.send_signal(signal.SIGTERM)
        signalled.set()
        reader.join(300)
        code = srv.proc.wait(timeout=300)
        log = srv.log.read_text()
    events = _events(lines)
    assert events[-1] == "data: [DONE]", log[-2000:]
    assert not any("error" in e for e in events[:-1]), events[-3:]
    assert sum(e["usage"]["completion_tokens"] for e in events[:-1] if e.get("usage")) >= 1
    finishes = [ch["finish_reason"] for e in events[:-1] for ch in e["choices"] if ch["finish_reason"]]
    assert len(finishes) == 1 and "Shutting down" in log
    assert code == 0, log[-2000:]
