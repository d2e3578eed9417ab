"""Weight-only quantised matmul kernels on this CPU: which one to use at which row count M.

    python benchmarks/bench_quant_kernels.py                     # 16384 x 2048 weight, bf16, M = 1..64
    python benchmarks/bench_quant_kernels.py --out 16384 --in 2048 --rows 1,8 --threads 2 --json k.json

One weight W [out, in] (Gemma-2B's MLP up projection by default), activations x [M, in] in bf16,
each candidate timed (best of --reps after a warm-up) at each M and checked against the float32
product of the weight it actually holds (max |err| / max |ref|):

- `bf16`: F.linear with the bf16 weight (the float baseline: what int8/int4 must beat).
- `int8pack`: `torch._weight_int8pack_mm` (fused per-channel int8 GEMV).
- `int8cast`: F.linear(x, q.to(bf16)) * s (cast the whole int8 weight per call).
- `int8tile`: the same, one tile of `--tile` rows at a time into a reused bf16 buffer (cache-sized).
- `int8compile`: torch.compile of `F.linear(x, q.to(bf16)) * s` (inductor may fuse the cast).
- `int4gG`: `_weight_int4pack_mm_for_cpu` with group size G (asymmetric, scales and zeros).
- `int8frozen`, `int4g64frozen`: the int8pack / int4 op of a module whose weights are buffers,
  under torch.compile with freezing + max-autotune: inductor may pick its C++ GEMM template
  (AMX / AVX-512) over aten's kernel (generation does not reach this yet: see quantize.py).

The table it prints is the one recorded in `vlmkit/generation/quantize.py`'s docstring.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).parent))
from vlmkit.generation.quantize import quantize_per_channel  # noqa: E402
from vlmkit.generation.quantize_int4 import pack_int4, quantize_int4_groups  # noqa: E402


KERNEL_LEGEND = "times in ms per matmul (16384 x 2048 weight, bf16 activations) at M rows; *_err = max abs error against the float32 product"


def interleaved_best_ms(fns: dict, reps: int) -> dict:
    """name -> best time (ms) of `reps` calls, the candidates taking turns (A, B, C, A, B, C, ...)
    so that a burst of load from other processes hits them alike."""
    times = {n: [] for n in fns}
    for _ in range(reps):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[n].append(time.perf_counter() - t0)
    return {n: min(t) * 1e3 for n, t in times.items()}


class _Holder(torch.nn.Module):
    """Weights as buffers (what freezing turns into constants) and a forward `fn(self, x)`."""

    def __init__(self, fn, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.fn = fn
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, x):
        return self.fn(self, x)


def _frozen(fn, a, b):
    return torch.compile(_Holder(fn, a, b).eval(), dynamic=False, options={"max_autotune": True, "freezing": True})


def candidates(w: torch.Tensor, tile: int, groups: list[int]) -> dict:
    """name -> (fn(x) -> y, the float32 weight the candidate holds)."""
    q, s = quantize_per_channel(w)
    s16 = s.bfloat16()
    deq8 = q.float() * s16.float()[:, None]
    w16 = w.bfloat16()
    buf = torch.empty(tile, w.shape[1], dtype=torch.bfloat16)

    def tiled(x):
        out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        for r in range(0, w.shape[0], tile):
            torch.mul(q[r:r + tile], s16[r:r + tile, None], out=buf)  # dequantise into the cached tile
            torch.mm(x, buf.T, out=out[:, r:r + tile])
        return out

    compiled = torch.compile(lambda x, q, s: F.linear(x, q.to(x.dtype)) * s, dynamic=False)
    out = {
        "bf16": (lambda x: F.linear(x, w16), w16.float()),
        "int8pack": (lambda x: torch._weight_int8pack_mm(x, q, s16), deq8),
        "int8cast": (lambda x: F.linear(x, q.to(x.dtype)) * s16, deq8),
        "int8tile": (tiled, deq8),
        "int8compile": (lambda x: compiled(x, q, s16), deq8),
    }
    out["int8frozen"] = (_frozen(lambda m, x: torch._weight_int8pack_mm(x, m.a, m.b), q, s16), deq8)
    for g in groups:
        qi, scales, zeros = quantize_int4_groups(w, g)
        packed, sz = pack_int4(qi, scales, zeros)
        deq4 = ((qi.view(w.shape[0], -1, g).float() - 8) * scales.bfloat16().float()[..., None]
                + zeros.bfloat16().float()[..., None]).view(w.shape)
        out[f"int4g{g}"] = ((lambda x, p=packed, g=g, sz=sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz)),
                            deq4)
        if g == 64:
            op = torch.ops.aten._weight_int4pack_mm_for_cpu
            out["int4g64frozen"] = (_frozen(lambda m, x: op(x, m.a, 64, m.b), packed, sz), deq4)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=int, default=16384)
    p.add_argument("--in", dest="in_features", type=int, default=2048)
    p.add_argument("--rows", default="1,2,8,16,32,64")
    p.add_argument("--groups", default="32,64,128")
    p.add_argument("--tile", type=int, default=512, help="rows per dequantised tile for int8tile")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--only", help="comma-separated candidate names")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    w = torch.randn(args.out, args.in_features, generator=torch.Generator().manual_seed(0)) * 0.02
    cands = candidates(w, args.tile, [int(g) for g in args.groups.split(",")])
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only.split(",")}
    rows = []
    with torch.inference_mode():
        for m in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(m, args.in_features, generator=torch.Generator().manual_seed(m)).bfloat16()
            row = {"M": m}
            for name, (fn, wf) in cands.items():  # warm-up (compiles) and error first
                ref = x.float() @ wf.T
                row[f"{name}_err"] = float((fn(x).float() - ref).abs().max() / ref.abs().max())
            row |= interleaved_best_ms({n: (lambda fn=fn: fn(x)) for n, (fn, _) in cands.items()}, args.reps)
            rows.append(row)
            print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if not k.endswith("_err")), flush=True)
    from _common import run_metadata

    meta = {**run_metadata(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "weight": [args.out, args.in_features]}
    print(json.dumps(meta))
    names = list(cands)
    print("M    " + " ".join(f"{n:>11}" for n in names) + "   (ms; fastest marked *)")
    for r in rows:
        fastest = min(names, key=lambda n: r[n])
        print(f"{r['M']:<4} " + " ".join(f"{r[n]:>10.2f}{'*' if n == fastest else ' '}" for n in names))
    print("max rel err: " + " ".join(f"{n}={max(r[n + '_err'] for r in rows):.2g}" for n in names))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "kind": "quant-kernels", "ratio_legend": KERNEL_LEGEND, "rows": rows},
                                         indent=1))


if __name__ == "__main__":
    main()
