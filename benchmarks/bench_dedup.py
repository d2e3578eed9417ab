"""Embedding dedup at scale: rows/s, peak RSS, index size and recall of each `embed_dedup` index.

    .venv/bin/python benchmarks/bench_dedup.py --rows 1000000 --json benchmarks/results/dedup-cpu.json

Input: `--rows` synthetic L2-normalised float32 embeddings of width `--dim`, generated in batches
(the generator holds the cluster centres, the first batch and a ring of recent rows: bounded).
Rows are drawn around 1000 cluster centres (cosine within a cluster ~0.3, at most ~0.7 over 10^6
rows: far below the threshold), and a fraction `--dups` of the rows are planted near-duplicates
(cosine 0.93 .. 0.995) of an earlier original row: of the last 65536 rows, or of the first batch
(long range). So the exact answer is known: the planted rows, and no others, have an earlier
row at cosine >= `--threshold` (0.9).

Each variant (an index kind and storage of `vlmkit.curation.embed_index`) runs in its own
subprocess (so its peak RSS is its own) through `dedup_batch`, the function `embed_dedup`
calls, in batches of `--batch-size`. Reported: rows/s (dedup time only, not generation), peak RSS,
the saved index's bytes (per row), recall (planted rows removed / planted rows), false-positive
rate (other rows removed / other rows), and the share of decisions equal to the exact flat
search's (over the rows both ran). A variant `kind:storage:N` runs on the first N rows only: the
exact float32 flat index by default (its cost grows with the index, each row being compared with
every kept row: ~50 minutes for 10^6 x 256 on 2 idle cores), and HNSW (single-threaded insertion).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LEGEND = ("rows/s of one process (higher is faster), peak RSS of the process, recall of the planted "
          "near-duplicates and false-positive rate over the other rows (exact search: 1 and 0)")
VARIANTS = ("flat:float32:100000", "ivf:float32", "ivf:sq8", "hnsw:float32:200000", "hnsw:sq8:200000")
CLUSTERS, WINDOW = 1000, 65536


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(rows: int, dim: int, batch: int, dups: float, seed: int = 0):
    """Yield (x [B, dim] float32 unit rows, planted [B] bool) batches; the same for the same args."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((CLUSTERS, dim)))  # [C, dim]
    ring = np.zeros((WINDOW, dim), np.float32)  # the last WINDOW original rows
    seen, first = 0, None
    for start in range(0, rows, batch):
        b = batch  # always a full batch of draws, cut at the end: the first N rows do not depend on `rows`
        x = _unit(centres[rng.integers(0, CLUSTERS, b)] + 1.5 * rng.standard_normal((b, dim)) / np.sqrt(dim))
        planted = (rng.random(b) < dups) if seen else np.zeros(b, bool)
        far = rng.random(b) < 0.1  # a tenth of the copies are of the first batch's rows
        src = np.where(far, rng.integers(0, len(first) if first is not None else 1, b),
                       rng.integers(max(0, seen - WINDOW), max(seen, 1), b))  # fmt: skip
        pool = [first[s] if f else ring[s % WINDOW] for s, f in zip(src[planted], far[planted])]
        if pool:
            noise = rng.uniform(0.1, 0.4, (len(pool), 1)) * rng.standard_normal((len(pool), dim)) / np.sqrt(dim)
            x[planted] = _unit(np.stack(pool) + noise)
        originals = x[~planted]
        ring[(seen + np.arange(len(originals))) % WINDOW] = originals
        seen += len(originals)
        first = originals.copy() if first is None else first
        yield x[: rows - start], planted[: rows - start]


def run_variant(variant: str, a) -> dict:
    """One index over the synthetic rows (in this process): timings, memory, decisions."""
    import faiss

    from vlmkit.curation.embed_index import EmbedIndex, IndexConfig, dedup_batch

    if a.threads:
        faiss.omp_set_num_threads(a.threads)
    kind, storage, *cap = variant.split(":")
    rows = min([a.rows, *map(int, cap)])
    cfg = IndexConfig(index=kind, storage=storage, nlist=a.nlist, nprobe=a.nprobe, hnsw_m=a.hnsw_m,
                      ef_search=a.ef_search, train_rows=a.train_rows)  # fmt: skip
    index, keep, planted, seconds = EmbedIndex(cfg), [], [], 0.0
    for x, p in synthetic(rows, a.dim, a.batch_size, a.dups):
        t0 = time.perf_counter()
        keep += dedup_batch(index, x, a.threshold)
        seconds += time.perf_counter() - t0
        planted.append(p)
    with tempfile.TemporaryDirectory() as tmp:
        nbytes = index.nbytes(Path(tmp))
    keep, planted = np.array(keep), np.concatenate(planted)
    return {"variant": f"{kind} {storage}", "factory": cfg.factory(), "rows": rows, "rows/s": rows / seconds,
            "seconds": seconds, "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "index MB": nbytes / 2**20, "index bytes/row": nbytes / max(index.ntotal, 1),
            "recall": float((~keep[planted]).mean()), "false-positive rate": float((~keep[~planted]).mean()),
            "keep": np.packbits(keep).tobytes().hex()}  # fmt: skip


def _child(variant: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, *argv, "--child", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def _agreement(rows: list[dict]) -> None:
    """Per row: the share of its decisions equal to the exact flat search's, over the rows both ran."""
    decisions = {r["variant"]: np.unpackbits(np.frombuffer(bytes.fromhex(r.pop("keep")), np.uint8)) for r in rows}
    ref = next((r for r in rows if r["variant"] == "flat float32"), None)
    for r in rows:
        n = min(r["rows"], ref["rows"]) if ref else 0
        same = decisions[r["variant"]][:n] == decisions["flat float32"][:n] if ref else None
        r["same as exact"] = None if ref is None else float(same.mean())


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--dups", type=float, default=0.05, help="fraction of planted near-duplicate rows")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated index:storage[:rows] (rows: at most that many of --rows)")
    p.add_argument("--nlist", type=int, default=2048)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--train-rows", type=int, default=65536)
    p.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.child:
        print(json.dumps(run_variant(a.child, a)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import report, run_metadata  # here: the children need neither (nor torch, which it imports)

    meta = run_metadata(argv)
    rows = [_child(v, argv) for v in a.variants.split(",")]  # a child prints its row, writes no JSON
    _agreement(rows)
    print(f"{a.rows} rows x {a.dim} float32, {a.dups:.0%} planted near-duplicates, threshold {a.threshold}, "
          f"batch {a.batch_size}; load average at start "
          f"{meta['loadavg_start'][0]:.2f}, now {os.getloadavg()[0]:.2f}")
    args = {k: getattr(a, k) for k in ("rows", "variants", "dim", "batch_size", "dups", "threshold", "nlist",
                                       "nprobe", "hnsw_m", "ef_search", "train_rows", "threads")}  # fmt: skip
    report(rows, LEGEND, a.json, meta, kind="dedup", args=args)


if __name__ == "__main__":
    main()
