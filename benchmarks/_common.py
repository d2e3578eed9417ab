"""Shared benchmark helpers: hardware floors, peak RSS, worker subprocesses, tables.

Fair comparison on a shared machine: each framework runs in its own long-lived subprocess (so its
peak RSS is its own), and the parent sends them the same commands in turn (A, B, A, B, ...) so
that load from other users of the CPU hits both sides alike. Reported times are the best of the
repetitions (the least disturbed run), with every sample kept in the JSON output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils import flop_counter

from _worker_protocol import peak_rss_mb, serve  # noqa: F401 - re-exported; torch-free for other venvs


def sync(device: torch.device | str = "cpu") -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], reps: int = 5, device: torch.device | str = "cpu") -> float:
    """Smallest wall time of `reps` calls of fn (seconds), GPU work included."""
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def measure_bandwidth(mib: int = 512, reps: int = 5, device: torch.device | str = "cpu") -> float:
    """Memory bandwidth in bytes/s from copying a `mib` MiB tensor (a copy reads and writes it)."""
    src = torch.ones(mib << 18, dtype=torch.float32, device=device)  # mib MiB of float32
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in before timing
    return 2 * src.numel() * 4 / best_time(lambda: dst.copy_(src), reps, device)


def measure_matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5,
                        device: torch.device | str = "cpu") -> float:  # fmt: skip
    """Dense matmul rate in FLOP/s for [n, n] @ [n, n] in `dtype` on `device`."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up: oneDNN / cuBLAS picks and caches its kernel
    return 2 * n**3 / best_time(lambda: a @ b, reps, device)


def gpu_hardware(device: torch.device) -> dict:
    """The GPU's floors: copy bandwidth of its memory and dense matmul rates, measured now."""
    return {
        "torch": torch.__version__, "device": "cuda", "gpu": torch.cuda.get_device_name(device),
        "bandwidth_GBps": measure_bandwidth(2048, 10, device) / 1e9,  # 2 GiB: far past any cache
        "matmul_GFLOPs": {d: measure_matmul_rate(getattr(torch, d), 8192, 10, device) / 1e9
                          for d in ("float32", "bfloat16", "float16")},
    }


def hardware(device: torch.device | str = "cpu") -> dict:
    """What the floors are computed from, measured now (the machine may be shared)."""
    if torch.device(device).type == "cuda":
        return gpu_hardware(torch.device(device))
    from vlmkit.weights.dtype import cpu_has_fast_bf16  # here: open_clip's worker env has no vlmkit

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return {
        "torch": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
        "bandwidth_GBps": measure_bandwidth() / 1e9,
        # Without native bf16 (e.g. AVX2-only CPUs) torch's bf16 matmul runs ~0.3 GFLOP/s: one
        # 2048^3 product takes ~50 s, so measure it on 512^3 there (the rate is what matters).
        "matmul_GFLOPs": {
            "float32": measure_matmul_rate(torch.float32) / 1e9,
            "bfloat16": measure_matmul_rate(torch.bfloat16, n=2048 if cpu_has_fast_bf16() else 512) / 1e9,
        },
    }


def _lscpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), None)


def _version(module: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


def run_metadata(argv: Sequence[str] | None = None) -> dict:
    """Where and when a benchmark ran, for the committed JSON: UTC date, the command, the CPU
    (lscpu model name, the bf16 / AMX flags), library versions, git commit, and the load average
    at the start (the machine may be shared: other load slows both sides, and more so tiny ops)."""
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", os.path.relpath(sys.argv[0]), *argv]),
        "loadavg_start": list(os.getloadavg()), "cpus": os.cpu_count(), "cpu_model": _lscpu_model(),
        "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
        "python": sys.version.split()[0], "git_commit": commit,
        **{m: _version(m) for m in ("torch", "transformers", "torchao")},
    }


def torchao_missing() -> str | None:
    """None when torchao imports and int8-quantises a Linear here, else the one-line reason."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(torch.nn.Sequential(torch.nn.Linear(32, 8)), Int8WeightOnlyConfig())
    except Exception as e:  # noqa: BLE001 - any failure means the variant cannot run here
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return None


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn(), the matmul FLOPs it ran): linear, conv, bmm and attention, forward and backward.

    torch's FlopCounterMode knows the CUDA attention kernels but not the CPU flash-attention op
    that F.scaled_dot_product_attention (and nn.MultiheadAttention) dispatch to on CPU, which it
    would count as 0; it is mapped here to torch's own SDPA formulas (2 matmuls forward; backward
    counts 5, the scores being recomputed).
    """
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = fn()
    return out, counter.get_total_flops()


class Worker:
    """A subprocess that answers JSON commands, one per line, with one JSON reply per line."""

    def __init__(self, argv: Sequence[str], name: str, python: str | None = None):
        """`python`: the interpreter to run argv with (another environment's); default this one."""
        self.name = name
        self.proc = subprocess.Popen(
            [python or sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def ask(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()}); see its stderr above")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def format_table(rows: list[dict], columns: Sequence[str]) -> str:
    """Fixed-width text table; floats get 3 significant digits, None becomes '-'."""
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def report(rows: list[dict], legend: str, json_path, meta: dict, **payload) -> None:
    """Print the ratio legend and the rows' table; with `json_path`, write meta (plus the load average
    at the end), the legend, `payload` and the rows there."""
    print(legend)
    print(format_table(rows, list(rows[0])))
    if json_path:
        meta["loadavg_end"] = list(os.getloadavg())
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"meta": meta, "ratio_legend": legend, **payload, "rows": rows}, indent=1))


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b
