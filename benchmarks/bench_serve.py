"""`vlmkit serve` throughput: continuous batching vs one request at a time, in the same run.

    python benchmarks/bench_serve.py [--clients 1,8,32] [--max-batch 32] [--dtype auto,float32] [--json out.json]

For each --dtype (default `auto`: what `vlmkit serve` runs by default, resolved by the same
`resolve_dtype` and printed, e.g. bfloat16 on a CPU with AVX512-BF16/AMX), two servers on the
bundled model run as subprocesses (`python -m vlmkit serve --dtype D` on 127.0.0.1, free ports,
`OMP_NUM_THREADS=--threads`): one with `--max-batch 1` (every request alone: the scheduler admits
the next request when the previous one has finished) and one with `--max-batch B` (continuous
batching). For each number of concurrent clients, each server gets the same list of greedy
requests (varied prompts and images, `max_tokens` fixed; the bundled model often stops earlier at
EOS), sent by `clients` asyncio workers over HTTP (httpx), each sending its next request when its
last one has been answered. Runs are interleaved (A, B, A, B, ... over every dtype) and the best
of --reps is reported; every sample is kept in the JSON. Each server first serves one unmeasured
run at the largest client count (first allocations, lazy imports, oneDNN kernels for new shapes).

Reported per dtype: requests/s and completion tokens/s (wall time from the first request sent to
the last answer), the ratio to the same dtype's one-at-a-time server, p50 / p95 latency, and from
the server's /metrics the mean rows per decode step and the share of wall time spent in decode
steps and in admissions (image encoding + prefill of the requests admitted between two steps);
the rest is the scheduler idle or waiting on HTTP work. Both servers of a dtype must give the same
answers (greedy), in every run; the table says whether they did and the JSON lists the requests
that did not (answers of different dtypes may differ).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import format_table, ratio, run_metadata  # noqa: E402

from vlmkit.errors import VlmkitError  # noqa: E402
from vlmkit.serving.launch import ServerProcess  # noqa: E402
from vlmkit.weights.dtype import resolve_dtype  # noqa: E402

PROMPTS = ["caption en", "detect circle ; square", "answer en what colour is it?", "ocr", "segment square"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange"]
LEGEND = ("ratio x one-at-a-time = this row's tokens/s / the max-batch 1 server's tokens/s at the same dtype and "
          "number of clients (> 1 = this row faster); dtype as `vlmkit serve --dtype` resolves it on this CPU")


def _image_uri(i: int) -> str:
    img = Image.new("RGB", (64, 64), COLOURS[i % len(COLOURS)])
    x = 5 * i % 40
    img.paste("white" if i % 2 else "gray", (x, 8 + i % 13, x + 20, 30 + i % 17))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_bodies(n: int, max_tokens: int) -> list[dict]:
    """n greedy chat requests: prompt i % 5, image i (varied colours and positions)."""
    return [{"messages": [{"role": "user", "content": [{"type": "text", "text": PROMPTS[i % len(PROMPTS)]},
                                                       {"type": "image_url", "image_url": {"url": _image_uri(i)}}]}],
             "max_tokens": max_tokens, "temperature": 0} for i in range(n)]


def parse_dtypes(text: str) -> list[tuple[str, str]]:
    """"auto,float32" -> [("auto", "bfloat16"), ("float32", "float32")]: each name as given (passed
    to the servers' --dtype) and the dtype `vlmkit serve` resolves it to on this CPU; a name that
    resolves to a dtype listed before it is dropped."""
    out: dict[str, str] = {}
    for name in (t.strip() for t in text.split(",") if t.strip()):
        try:
            resolved = str(resolve_dtype(name, "cpu")).removeprefix("torch.")
        except VlmkitError as exc:
            raise SystemExit(f"bench_serve.py: error: --dtype: {exc}") from None
        out.setdefault(resolved, name)
    if not out:
        raise SystemExit("bench_serve.py: error: --dtype: no dtype given")
    return [(name, resolved) for resolved, name in out.items()]


def dtype_label(name: str, resolved: str) -> str:
    return resolved if name == resolved else f"{resolved} ({name})"


def start_server(max_batch: int, dtype: str, args, log: Path) -> ServerProcess:
    server = ServerProcess("--max-batch", str(max_batch), "--max-len", str(args.max_len), "--max-queue", "4096",
                           "--dtype", dtype, log=log, threads=args.threads)
    server.max_batch = max_batch
    return server


async def _run_clients(url: str, bodies: list[dict], clients: int) -> tuple[float, list[dict]]:
    """Send `bodies` from `clients` concurrent workers; (wall seconds, one record per request)."""
    todo = list(enumerate(bodies))[::-1]
    records: list[dict] = [{} for _ in bodies]

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            i, body = todo.pop()
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json=body)
            if r.status_code != 200:
                raise SystemExit(f"request {i} got HTTP {r.status_code}: {r.text[:300]}")
            out = r.json()
            records[i] = {"latency_s": time.perf_counter() - t0, "text": out["choices"][0]["message"]["content"],
                          "completion_tokens": out["usage"]["completion_tokens"]}

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return time.perf_counter() - t0, records


def measure(server: ServerProcess, bodies: list[dict], clients: int) -> dict:
    """One run of `bodies` at `clients` concurrency against `server`."""
    before = server.metrics()
    wall, records = asyncio.run(_run_clients(server.url, bodies, clients))
    after = server.metrics()

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    tokens = sum(r["completion_tokens"] for r in records)
    latencies = sorted(r["latency_s"] for r in records)
    steps = delta("vlmkit_batch_size_count")
    return {"wall_s": wall, "requests/s": len(records) / wall, "tokens/s": tokens / wall,
            "completion_tokens": tokens, "p50 latency s": statistics.median(latencies),
            "p95 latency s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "rows per step": delta("vlmkit_batch_size_sum") / steps if steps else None,
            "decode share": delta("vlmkit_decode_step_seconds_sum") / wall, "decode steps": steps,
            "admit share": delta("vlmkit_admit_seconds_sum") / wall,
            "admissions": delta("vlmkit_admit_seconds_count"),
            "texts": [r["text"] for r in records]}


def _variant(max_batch: int) -> str:
    return "one at a time (max-batch 1)" if max_batch == 1 else f"continuous (max-batch {max_batch})"


def _rows(label: str, clients: int, n: int, runs: dict[int, list[dict]], max_batch: int) -> tuple[list, dict]:
    """One dtype's two table rows at `clients` (best of its runs) and its samples."""
    best = {b: max(rs, key=lambda m: m["tokens/s"]) for b, rs in runs.items()}
    ref = runs[1][0]["texts"]  # every run of both servers must answer as the first lone run did
    differ = sorted({i for rs in runs.values() for r in rs for i, (a, b) in enumerate(zip(ref, r["texts"])) if a != b})
    same = not differ
    if differ:  # shown, so that a near-tie can be told from a scheduling bug
        print(f"{label} @ {clients} clients: requests {differ} were not always answered alike:\n" + "\n".join(
            f"  {i}: {sorted({r['texts'][i] for rs in runs.values() for r in rs})}" for i in differ), file=sys.stderr)
    rows, samples = [], {}
    for b in (1, max_batch):
        m = {k: v for k, v in best[b].items() if k != "texts"}
        rows.append({"dtype": label, "variant": _variant(b), "clients": clients, "requests": n, **m,
                     "x one-at-a-time": ratio(m["tokens/s"], best[1]["tokens/s"]), "same answers": same,
                     "different answers": differ})
        samples[f"{label} {_variant(b)} @ {clients}"] = [{k: v for k, v in r.items() if k != "texts"} for r in runs[b]]
    return rows, samples


def run(args) -> dict:
    logs = tempfile.TemporaryDirectory(prefix="bench-serve-")
    servers = {(label, b): start_server(b, name, args, Path(logs.name) / f"{resolved}-max-batch-{b}.log")
               for name, resolved in args.dtype for label in [dtype_label(name, resolved)] for b in (1, args.max_batch)}
    try:
        warm = request_bodies(max(args.min_requests, max(args.clients)), args.max_tokens)
        for s in servers.values():
            s.wait_ready()
            measure(s, warm, max(args.clients))  # unmeasured: allocations, lazy imports, kernels per shape
        rows, samples = [], {}
        for clients in args.clients:
            bodies = request_bodies(max(args.min_requests, clients * args.requests_per_client), args.max_tokens)
            runs: dict[tuple, list[dict]] = {key: [] for key in servers}
            for _ in range(args.reps):
                for key, s in servers.items():  # interleaved: load from other users hits every server alike
                    runs[key].append(measure(s, bodies, clients))
            for name, resolved in args.dtype:
                label = dtype_label(name, resolved)
                r, sm = _rows(label, clients, len(bodies), {b: runs[label, b] for b in (1, args.max_batch)},
                              args.max_batch)
                rows += r
                samples.update(sm)
            print(f"clients {clients}: done", file=sys.stderr)
    finally:
        for s in servers.values():
            s.close()
        logs.cleanup()
    return {"rows": rows, "samples": samples}


COLUMNS = ("dtype", "variant", "clients", "requests", "requests/s", "tokens/s", "x one-at-a-time", "p50 latency s",
           "p95 latency s", "rows per step", "decode share", "admit share", "same answers")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", default="1,8,32", help="concurrent clients per run, comma-separated (default 1,8,32)")
    p.add_argument("--max-batch", type=int, default=32, help="the continuous-batching server's --max-batch (default 32)")
    p.add_argument("--max-tokens", type=int, default=24, help="max_tokens of every request (default 24)")
    p.add_argument("--requests-per-client", type=int, default=4, help="requests per client in a run (default 4)")
    p.add_argument("--min-requests", type=int, default=32, help="at least this many requests per run (default 32)")
    p.add_argument("--reps", type=int, default=4, help="runs per server and client count; the best is reported")
    p.add_argument("--max-len", type=int, default=256, help="the servers' --max-len (default 256)")
    p.add_argument("--dtype", default="auto", help="the servers' --dtype, comma-separated for several side by side "
                   "(default auto: what `vlmkit serve` runs by default, bfloat16 on CPUs with native bf16)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each server (default 1)")
    p.add_argument("--json", type=Path, help="write every sample and the metadata here")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.dtype = parse_dtypes(args.dtype)
    print("dtypes: " + ", ".join(f"{n} -> {r}" for n, r in args.dtype), file=sys.stderr)
    meta = run_metadata(argv)
    out = run(args)
    meta["loadavg_end"] = list(os.getloadavg())
    print(LEGEND)
    print(format_table(out["rows"], COLUMNS))
    load = "/".join(f"{v:.2f}" for v in meta["loadavg_start"])
    print(f"load average at start {load}, at end {'/'.join(f'{v:.2f}' for v in meta['loadavg_end'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "benchmark": "serve", "ratio_legend": LEGEND,
                   "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, **out}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
