"""Weight-only quantised matmul kernels on this CPU: which one to use at which row count M.

    python benchmarks/bench_quant_kernels.py                     # 16384 x 2048 weight, bf16, M = 1..64
    python benchmarks/bench_quant_kernels.py --out 2048,16384 --in 2048 --rows 1,8,32 --threads 2 --json k.json

One weight W [out, in] (Gemma-2B's MLP up projection by default), activations x [M, in] in bf16,
each candidate timed (best of --reps after a warm-up) at each M and checked against the float32
product of the weight it actually holds (max |err| / max |ref|):

- `bf16`: F.linear with the bf16 weight (the float baseline: what int8/int4 must beat).
- `int8pack`: `torch._weight_int8pack_mm` (fused per-channel int8 GEMV).
- `int8cast`: F.linear(x, q.to(bf16)) * s (cast the whole int8 weight per call).
- `int8tile`: the same, one tile of `--tile` rows at a time into a reused bf16 buffer (cache-sized).
- `int8compile`: torch.compile of `F.linear(x, q.to(bf16)) * s` (inductor may fuse the cast).
- `int4gG`: `_weight_int4pack_mm_for_cpu` with group size G (asymmetric, scales and zeros).
- `int8dyn`: dynamic W8A8 (`vlmkit.generation.quantize_dynamic.dynamic_int8_matmul` below its
  row limit): each activation row quantised to int8, `torch._int_mm` (oneDNN s8 GEMM, VNNI / AMX),
  rescaled by row and column scales; `int8dyn_gemm`: the `_int_mm` call alone (inputs already int8).
- `int8dyn_onednn`: the same numerics through oneDNN's prepacked `onednn::qlinear_pointwise`, as
  `vlmkit.generation.quantize_packed._PackedInt8` calls it (uint8 codes with zero point 128, scales
  1, the row and column scales applied after; a prepacked opaque weight, no state dict).
- `int8dyn_vlmkit`: the same numerics through vlmkit's own kernels (`vlmkit/kernels`, what
  `--quantize int8-dyn --prepack` runs where they build: AVX-512 VNNI up to 16 rows, AMX past
  that and from 6 rows on a wide weight where the CPU has it, else `torch._int_mm`), on the plain
  int8 weight. `int8dyn_vnni`: the VNNI kernel alone up to 16 rows (past 16 rows the same as
  `int8dyn_vlmkit`).
- `torchao_w8a8`: torchao's `Int8DynamicActivationInt8WeightConfig` on an nn.Linear, if it runs here.
- `int8frozen`, `int4g64frozen`: the int8pack / int4 op of a module whose weights are buffers,
  under torch.compile with freezing + max-autotune: inductor may pick its C++ GEMM template
  (AMX / AVX-512) over aten's kernel (generation does not reach this yet: see quantize.py).

The table it prints is the one recorded in `vlmkit/generation/quantize.py`'s docstring (and, for the
W8A8 rows, `quantize_dynamic.py`'s).
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
from vlmkit.generation.quantize_dynamic import quantize_rows  # noqa: E402
from vlmkit.generation.quantize_int4 import pack_int4, quantize_int4_groups  # noqa: E402
from vlmkit.generation.quantize_packed import _KernelInt8, _PackedInt8, packed_int8_available  # noqa: E402
from vlmkit.kernels import KERNEL_MAX_ROWS, int8_linear_small, load_int8_kernels  # noqa: E402


KERNEL_LEGEND = ("ms per matmul x [M, K] @ W[N, K].T, bf16 activations; GB/s = the candidate's weight bytes / time; x bf16 = "
                 "bf16 F.linear's time / this time (> 1 = faster); rel err = max |y - float32 product of the candidate's "
                 "weight| / max |product|")


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
    """Compiled with frozen buffers + max-autotune. Freezing is read from the global inductor config
    when dynamo traces (as `vlmkit.generation.compile` sets it), not from `options=`."""
    # One _Holder.forward code object for every candidate, weight and row count: each is a recompile.
    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 4096
    compiled = torch.compile(_Holder(fn, a, b).eval(), dynamic=False, fullgraph=True)

    def call(x):
        with torch._inductor.config.patch(freezing=True, max_autotune=True):
            return compiled(x)

    return call


def dynamic_candidates(q: torch.Tensor, s: torch.Tensor, deq8: torch.Tensor, w16: torch.Tensor) -> dict:
    """The W8A8 rows (see the module docstring): name -> (fn(x) -> y, the float32 weight)."""
    s32 = s.float()

    def dyn(x):  # dynamic_int8_matmul's GEMM path at any M (the bench also times M above its limit)
        a, sx = quantize_rows(x)
        return ((torch._int_mm(a, q.T) * sx) * s32).to(x.dtype)

    def gemm(x):
        return torch._int_mm(_int8_rows(x), q.T)

    out = {"int8dyn": (dyn, deq8), "int8dyn_gemm": (gemm, None)}
    if packed_int8_available(q.device):
        packed = _PackedInt8(q)  # the layer's own call (uint8 codes, zero point 128)
        out["int8dyn_onednn"] = ((lambda x: packed(x, s)), deq8)
    if load_int8_kernels():
        kernel = _KernelInt8(q, s)
        out["int8dyn_vlmkit"] = ((lambda x: kernel(x, s)), deq8)
        out["int8dyn_vnni"] = ((lambda x: int8_linear_small(x, q, kernel.wsum, kernel.scale32)
                                if x.shape[0] <= KERNEL_MAX_ROWS else kernel(x, s)), deq8)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        lin = torch.nn.Linear(w16.shape[1], w16.shape[0], bias=False, dtype=torch.bfloat16)
        lin.weight.data.copy_(w16)
        quantize_(lin, Int8DynamicActivationInt8WeightConfig())
        lin(torch.zeros(2, w16.shape[1], dtype=torch.bfloat16))
        out["torchao_w8a8"] = (lin, deq8)
    except Exception as e:  # noqa: BLE001 - a missing / failing torchao path is reported, not fatal
        print(f"torchao_w8a8 left out: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return out


_INT8_ROWS: dict = {}


def _int8_rows(x: torch.Tensor) -> torch.Tensor:
    """x's int8 rows, quantised once per input (int8dyn_gemm times the GEMM alone)."""
    key = (x.data_ptr(), tuple(x.shape))
    if key not in _INT8_ROWS:
        _INT8_ROWS[key] = quantize_rows(x)[0]
    return _INT8_ROWS[key]


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
    out |= dynamic_candidates(q, s16, deq8, w16)
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


def weight_bytes(name: str, w: torch.Tensor) -> float:
    """Bytes of `w` as candidate `name` stores it (bf16: 2 per weight, int8: 1, int4: 0.5 + scales)."""
    n = w.numel()
    if name == "bf16":
        return 2.0 * n
    if name.startswith("int4g"):
        g = int(name[5:].removesuffix("frozen"))
        return 0.5 * n + 4.0 * n / g  # codes + a bf16 scale and zero per group
    return 1.0 * n + 2.0 * w.shape[0]  # int8 codes + a scale per output channel


def measure(w: torch.Tensor, args) -> list[dict]:
    """One row per (M, candidate) for weight w [N, K]: ms, GB/s of the weight bytes, bf16's time /
    this time (> 1: faster than bf16) and the relative error."""
    cands = candidates(w, args.tile, [int(g) for g in args.groups.split(",")])
    if args.only:
        cands = {k: v for k, v in cands.items() if k in args.only.split(",") or k == "bf16"}
    rows = []
    with torch.inference_mode():
        for m in [int(r) for r in args.rows.split(",")]:
            x = torch.randn(m, w.shape[1], generator=torch.Generator().manual_seed(m)).bfloat16()
            err = {}
            for name, (fn, wf) in cands.items():  # warm-up (compiles) and error first
                y = fn(x)
                if wf is not None:
                    ref = x.float() @ wf.T
                    err[name] = float((y.float() - ref).abs().max() / ref.abs().max())
            times = interleaved_best_ms({n: (lambda fn=fn: fn(x)) for n, (fn, _) in cands.items()}, args.reps)
            rows += [{"N": w.shape[0], "K": w.shape[1], "M": m, "kernel": n, "ms": t,
                      "GB/s": weight_bytes(n, w) / t / 1e6, "x bf16": times["bf16"] / t, "rel err": err.get(n)}
                     for n, t in times.items()]
            print(f"N={w.shape[0]} M={m} " + " ".join(f"{n}={t:.3g}" for n, t in times.items()), flush=True)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="16384", help="comma-separated output sizes N (one weight [N, K] each)")
    p.add_argument("--in", dest="in_features", type=int, default=2048)
    p.add_argument("--rows", default="1,2,8,16,32,64")
    p.add_argument("--groups", default="32,64,128")
    p.add_argument("--tile", type=int, default=512, help="rows per dequantised tile for int8tile")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--only", help="comma-separated candidate names (bf16 is always timed)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    rows = []
    for n in [int(v) for v in args.out.split(",")]:
        w = torch.randn(n, args.in_features, generator=torch.Generator().manual_seed(0)) * 0.02
        rows += measure(w, args)
    from _common import format_table, run_metadata

    meta = {**run_metadata(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "weights": [[int(n), args.in_features] for n in args.out.split(",")]}
    print(json.dumps(meta))
    print(format_table(rows, list(rows[0])))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "kind": "quant-kernels", "ratio_legend": KERNEL_LEGEND, "rows": rows},
                                         indent=1))


if __name__ == "__main__":
    main()
