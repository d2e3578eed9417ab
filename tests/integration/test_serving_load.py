"""Load: 64 concurrent HTTP clients x 4 requests each against one uvicorn server on the bundled
model (continuous batching, --max-batch 16), in float32 and in bfloat16 (`serve`'s default here),
greedy, 16 kinds of request (prompts, images, max_tokens), every third one streamed. Nothing is
lost or duplicated (256 answers, 256 distinct completion ids, each stream has one finish and one
[DONE]), every answer equals the same request served alone (`Pipeline.generate`), and the server
is idle afterwards. p50 / p95 latency and throughput are printed (`pytest -rP` shows them); no
timing is asserted."""

import asyncio
import json
import statistics
import time

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402

import vlmkit  # noqa: E402
from tests.integration.serving_common import body, image, serving, uri  # noqa: E402
from vlmkit.generation import SamplingConfig  # noqa: E402
from vlmkit.serving.app import ServeConfig  # noqa: E402

CLIENTS, PER_CLIENT = 64, 4
PROMPTS = ["caption en", "detect circle ; square", "answer en what colour is it?", "ocr"]
COLOURS = ["red", "blue", "green", "yellow"]
KINDS = [(PROMPTS[k % 4], COLOURS[k // 4], 6 * (k // 4), 4 + 3 * (k % 5)) for k in range(16)]  # text, colour, x, max
FINISH = {"eos": "stop", "stop_string": "stop", "length": "length"}


def _request(k: int, stream: bool) -> dict:
    text, colour, x, max_tokens = KINDS[k]
    return body(text, uri(image(colour, x)), max_tokens=max_tokens, stream=stream)


async def _plain(client: httpx.AsyncClient, url: str, req: dict) -> dict:
    r = await client.post(url, json=req)
    assert r.status_code == 200, r.text
    out = r.json()
    (choice,) = out["choices"]
    return {"id": out["id"], "text": choice["message"]["content"], "finish": choice["finish_reason"]}


async def _streamed(client: httpx.AsyncClient, url: str, req: dict) -> dict:
    async with client.stream("POST", url, json=req) as r:
        assert r.status_code == 200
        lines = [line async for line in r.aiter_lines() if line]
    assert lines.count("data: [DONE]") == 1 and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert len(finishes) == 1, finishes
    text = "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"])
    return {"id": chunks[0]["id"], "text": text, "finish": finishes[0]}


async def _load(base: str) -> tuple[float, dict[int, dict]]:
    url = f"{base}/chat/completions"
    results: dict[int, dict] = {}

    async def client_task(client: httpx.AsyncClient, c: int) -> None:
        for j in range(PER_CLIENT):
            n = c * PER_CLIENT + j
            stream = n % 3 == 0
            t0 = time.perf_counter()
            out = await (_streamed if stream else _plain)(client, url, _request(n % 16, stream))
            assert n not in results
            results[n] = {**out, "latency": time.perf_counter() - t0, "stream": stream}

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_task(client, c) for c in range(CLIENTS)))
        return time.perf_counter() - t0, results


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: `serve --dtype auto` on AVX-512-BF16 CPUs
def test_64_clients_x_4_requests_equal_lone_answers(dtype):
    ref = vlmkit.load(dtype=dtype)
    alone = [ref.generate(text, image(colour, x), SamplingConfig(max_new_tokens=m)) for text, colour, x, m in KINDS]
    assert len({a.text for a in alone}) > 8  # the kinds really differ
    cfg = ServeConfig(max_batch=16, max_len=256, max_queue=CLIENTS * PER_CLIENT)
    with serving(vlmkit.load(dtype=dtype), cfg) as base:
        wall, results = asyncio.run(_load(base))
        health = httpx.get(base.removesuffix("/v1") + "/health").json()
        metrics = httpx.get(base.removesuffix("/v1") + "/metrics").text
    assert sorted(results) == list(range(CLIENTS * PER_CLIENT))  # nothing lost
    assert len({r["id"] for r in results.values()}) == len(results)  # nothing answered twice
    for n, r in results.items():
        want = alone[n % 16]
        assert (r["text"], r["finish"]) == (want.text, FINISH[want.finish_reason]), (n, r["stream"])
    assert health == {"status": "ok", "active_rows": 0}
    assert "vlmkit_queue_depth 0.0" in metrics
    latencies = sorted(r["latency"] for r in results.values())
    tokens = sum(len(alone[n % 16].token_ids) for n in results)
    print(f"\n{dtype}: {len(results)} requests from {CLIENTS} clients ({sum(r['stream'] for r in results.values())} streamed) "
          f"in {wall:.2f} s: {len(results) / wall:.1f} requests/s, {tokens / wall:.0f} completion tokens/s; "
          f"latency p50 {statistics.median(latencies):.3f} s, p95 {latencies[round(0.95 * (len(latencies) - 1))]:.3f} s")
