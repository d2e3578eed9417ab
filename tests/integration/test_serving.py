"""`vlmkit serve` in process (FastAPI's TestClient) on the bundled model: every endpoint, the
OpenAI response and streaming formats, n, stop, seeds, the API key, bad inputs, the task
extension, metrics."""

import base64
import io
import json

import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import vlmkit  # noqa: E402
from tests.integration.serving_common import body as _body  # noqa: E402
from tests.integration.serving_common import image as _image  # noqa: E402
from tests.integration.serving_common import uri as _uri  # noqa: E402
from vlmkit.generation import SamplingConfig  # noqa: E402
from vlmkit.serving.app import ServeConfig, create_app  # noqa: E402
from vlmkit.serving.inputs import Limits  # noqa: E402

URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def pipe():
    return vlmkit.load(dtype="float32")


@pytest.fixture(scope="module")
def ref():
    """A second copy for the lone reference answers (the server's thread owns `pipe`)."""
    return vlmkit.load(dtype="float32")


@pytest.fixture(scope="module")
def client(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    _image().save(folder / "red.png")
    cfg = ServeConfig(max_batch=4, max_len=256, limits=Limits(max_image_pixels=512 * 512, max_body_bytes=4 << 20,
                                                                  allow_local_files=folder))
    with TestClient(create_app(pipe, cfg)) as c:
        c.folder = folder
        yield c


def test_completion_equals_pipeline(client, ref):
    r = client.post(URL, json=_body())
    assert r.status_code == 200, r.text
    out = r.json()
    alone = ref.generate("caption en", _image(), SamplingConfig(max_new_tokens=6))
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["content"] == alone.text
    assert out["usage"] == {"prompt_tokens": 76, "completion_tokens": len(alone.token_ids),
                            "total_tokens": 76 + len(alone.token_ids)}


def test_stream_format(client):
    with client.stream("POST", URL, json=_body(stream=True, stream_options={"include_usage": True})) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"])
    plain = client.post(URL, json=_body()).json()
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]


def test_n_stop_and_seed(client):
    out = client.post(URL, json=_body(n=2)).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    text = out["choices"][0]["message"]["content"]
    assert out["choices"][1]["message"]["content"] == text  # greedy
    stopped = client.post(URL, json=_body(stop=[text[2:4]])).json()["choices"][0]
    assert stopped["message"]["content"] == text[:text.index(text[2:4])] and stopped["finish_reason"] == "stop"
    a, b = (client.post(URL, json=_body(temperature=1.0, seed=3, max_tokens=8)).json() for _ in range(2))
    assert a["choices"] == b["choices"]


def test_models_health_page_metrics(client):
    assert client.get("/health").json()["status"] == "ok"
    assert client.get("/v1/models").json()["data"][0]["object"] == "model"
    page = client.get("/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
    assert "http" not in page.text.split("<script>")[1]  # no CDN: the page works offline

    def tokens():
        lines = client.get("/metrics").text.splitlines()
        line = next(x for x in lines if x.startswith("vlmkit_generation_tokens_total"))
        return float(line.split()[-1])

    before = tokens()
    client.post(URL, json=_body())
    text = client.get("/metrics").text
    assert tokens() > before and "vlmkit_batch_size_bucket" in text and "vlmkit_queue_depth" in text
    assert "vlmkit_request_latency_seconds_count" in text and "vlmkit_time_to_first_token_seconds_sum" in text
    assert 'vlmkit_requests_total{endpoint="/v1/chat/completions",status="200"}' in text


def test_detect_extension_returns_boxes(client):
    body = _body("", max_tokens=12, vlmkit={"task": "detect", "objects": ["square"]})
    out = client.post(URL, json=body).json()["choices"][0]
    assert out["message"]["vlmkit"]["task"] == "detect"
    assert isinstance(out["message"]["vlmkit"]["boxes"], list)
    with client.stream("POST", URL, json={**body, "stream": True}) as r:  # what the web page reads
        chunks = [json.loads(x.removeprefix("data: ")) for x in r.iter_lines() if x and x != "data: [DONE]"]
    assert chunks[-1]["choices"][0]["vlmkit"] == out["message"]["vlmkit"]
    text = "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"])
    assert text == out["message"]["content"]


def test_local_files_only_under_the_folder(client):
    ok = client.post(URL, json=_body(url=str(client.folder / "red.png")))
    assert ok.status_code == 200
    r = client.post(URL, json=_body(url="/etc/passwd"))
    assert r.status_code == 400 and "outside" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid JSON"),
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 422, "temperature"),
    (_body(url="https://example.com/cat.png"), 400, "only data URIs"),
    (_body(url="data:text/plain;base64,aGVsbG8="), 400, "not an image"),
    (_body(url="data:image/png;base64,iVBORw0KGgo="), 400, "image"),
    (_body(url=_uri(Image.new("RGB", (1024, 1024)))), 413, "pixels"),
    (_body(max_tokens=10_000), 400, "cache slots"),
    ({"messages": [{"role": "user", "content": "caption en"}]}, 400, "has no image"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "caption en"}] + [
        {"type": "image_url", "image_url": {"url": _uri()}}] * 9}]}, 400, "at most 8"),
    (_body("x" * 40_000), 400, "characters"),
    (b"{" + b" " * (5 << 20) + b"}", 413, "request body larger"),
    (_body(n=9), 400, "max-batch"),
])
def test_bad_requests(client, body, status, words):
    raw = isinstance(body, bytes)
    kw = {"content": body, "headers": {"content-type": "application/json"}} if raw else {"json": body}
    r = client.post(URL, **kw)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert client.get("/health").json()["status"] == "ok"


def test_without_allow_local_files_paths_are_refused(pipe, tmp_path):
    _image().save(tmp_path / "x.png")
    with TestClient(create_app(pipe, ServeConfig(max_batch=2, max_len=256))) as c:
        r = c.post(URL, json=_body(url=str(tmp_path / "x.png")))
    assert r.status_code == 400 and "--allow-local-files" in r.json()["error"]["message"]


def test_api_key(pipe):
    with TestClient(create_app(pipe, ServeConfig(api_key="sekrit", max_batch=2, max_len=256))) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer sekrit"}).status_code == 200
        assert c.get("/metrics").status_code == 401


def test_concurrent_requests_equal_lone_answers(client, ref):
    """Continuous batching through HTTP: concurrent requests (different prompts and images, so
    different lengths and arrival steps) get exactly the answers each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(p, c, m) for p, c, m in [("caption en", "red", 9), ("detect square", "blue", 12),
                                      ("answer en what is it?", "green", 7), ("ocr", "yellow", 10),
                                      ("caption en", "blue", 5), ("detect circle ; square", "red", 11)]]

    def ask(job):
        p, c, m = job
        return client.post(URL, json=_body(p, _uri(_image(c)), max_tokens=m)).json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(ask, jobs))
    want = [ref.generate(p, _image(c), SamplingConfig(max_new_tokens=m)).text for p, c, m in jobs]
    assert got == want


def test_client_disconnect_cancels_and_frees_rows(client):
    import asyncio

    from vlmkit.serving.schemas import ChatRequest

    server = client.app.state.server

    class Gone:  # an HTTP request whose client has left
        async def is_disconnected(self):
            return True

    async def run():
        completion, _ = await server.submit(ChatRequest(**_body(max_tokens=150)))
        async for _ in completion.events(Gone()):
            pass
        return completion

    completion = asyncio.run(run())
    assert completion.req.cancelled and completion.finish[0] is None
    for _ in range(200):  # the scheduler frees the row before its next decode step
        if server.scheduler.active_rows == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert server.scheduler.active_rows == 0 and server.scheduler.cache.active == {}


def test_full_queue_is_429(client, monkeypatch):
    from vlmkit.serving.scheduler import QueueFullError

    def full(req):
        raise QueueFullError("the queue is full (1 waiting requests)")

    monkeypatch.setattr(client.app.state.server.scheduler, "submit", full)
    r = client.post(URL, json=_body())
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


SEG_TEXT = "<loc0128><loc0100><loc0900><loc0700>" + "".join(f"<seg{7 * c % 128:03d}>" for c in range(16)) + " circle"


def _scripted(monkeypatch, pipe, text):
    """Make the scheduler 'sample' the tokens of `text` then EOS (the bundled model never writes
    segment codes), so the whole HTTP path of a segment answer runs on a known answer. Only for
    sampled requests: greedy rows take the decode step's argmax without calling sample_next."""
    import torch

    import vlmkit.serving.scheduler as sched_mod

    script = iter(pipe.tokenizer.encode(text) + [pipe.tokenizer.eos_id])
    monkeypatch.setattr(sched_mod, "sample_next", lambda logits, cfg, gen: torch.tensor([next(script)]))


def test_segment_masks_are_pngs_with_mask_vae(pipe, client, tmp_path, monkeypatch):
    import numpy as np

    from vlmkit.tasks import parse_segmentations
    from vlmkit.tasks.segmentation import MaskVAE, decode_object_masks, write_random_npz

    write_random_npz(tmp_path / "vae.npz")
    img = Image.new("RGB", (80, 48), "white")  # not square: the PNG is the first image's W x H
    req = _body("", _uri(img), max_tokens=40, temperature=1.0, seed=0,  # sampled: every token asks sample_next
                vlmkit={"task": "segment", "objects": ["circle"]})
    _scripted(monkeypatch, pipe, SEG_TEXT)
    plain = client.post(URL, json=req).json()["choices"][0]["message"]
    assert plain["content"] == SEG_TEXT
    (no_vae,) = plain["vlmkit"]["masks"]
    assert set(no_vae) == {"label", "codes"} and len(no_vae["codes"]) == 16  # no --mask-vae: no png
    with TestClient(create_app(pipe, ServeConfig(max_batch=2, max_len=256, mask_vae=tmp_path / "vae.npz"))) as c:
        _scripted(monkeypatch, pipe, SEG_TEXT)
        out = c.post(URL, json=req).json()["choices"][0]["message"]["vlmkit"]
        _scripted(monkeypatch, pipe, SEG_TEXT)
        with c.stream("POST", URL, json={**req, "stream": True}) as r:
            chunks = [json.loads(x.removeprefix("data: ")) for x in r.iter_lines() if x and x != "data: [DONE]"]
        _scripted(monkeypatch, pipe, "<loc0128><loc0100><loc0900><loc0700> circle")  # a box without codes
        codeless = c.post(URL, json=req).json()["choices"][0]["message"]["vlmkit"]["masks"]
    assert chunks[-1]["choices"][0]["vlmkit"] == out
    (mask,) = out["masks"]
    assert (mask["label"], mask["codes"]) == (no_vae["label"], no_vae["codes"])
    assert mask["png"].startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(mask["png"].split(",", 1)[1])))
    assert png.mode == "L" and png.size == (80, 48)
    obj = parse_segmentations(SEG_TEXT, 80, 48).objects[0]
    (want,) = decode_object_masks(MaskVAE.from_npz(tmp_path / "vae.npz"), [obj.codes], [obj.box], 80, 48)
    got = np.asarray(png)
    assert set(np.unique(got)) <= {0, 255} and np.array_equal(got == 255, want) and want.any()
    assert codeless == [{"label": "circle", "codes": None, "png": None}]


def test_bad_mask_vae_file_is_one_error(pipe, tmp_path):
    from vlmkit.errors import VlmkitError

    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(VlmkitError, match="bad.npz"):
        create_app(pipe, ServeConfig(mask_vae=tmp_path / "bad.npz"))


def test_mailbox_wakes_the_loop_once_per_burst():
    import asyncio
    import threading

    from vlmkit.serving.scheduler import Event
    from vlmkit.serving.streams import Mailbox

    async def run():
        loop = asyncio.get_running_loop()
        wakeups, real = [], loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakeups.append(1), real(*a))[1]
        box, queues = Mailbox(loop), [asyncio.Queue() for _ in range(3)]
        burst = threading.Thread(target=lambda: [box.put(q, Event(i, str(i))) for i in range(4) for q in queues])
        burst.start()
        burst.join()  # the loop is blocked here: the whole burst is one wake-up
        got = [[(await q.get()).text for _ in range(4)] for q in queues]
        return wakeups, got

    wakeups, got = asyncio.run(run())
    assert wakeups == [1] and got == [["0", "1", "2", "3"]] * 3
