"""CPU kernels vlmkit compiles on first use (`int8_linear.cpp` and `amx_linear.cpp` next to this
file, built by `torch.utils.cpp_extension` into torch's extension cache, about 30-60 s once per
machine).

- `int8_linear_small`: W8A8 linear for 1-16 rows (decoding) with AVX-512 VNNI.
- `int8_linear_amx`: the same with AMX tiles, where the CPU has AMX: prefill, and decoding from
  `AMX_MIN_ROWS` rows on large weights (`amx_from_rows`).
- `int8_weight_only`: weight-only int8 (`--quantize int8`) through `int8_linear_amx`, each
  activation row split into three int8 rows (float32's precision), where the CPU has AMX.

All read the plain [N, K] int8 weight; the first two give always-dynamic W8A8's bits, the third
the float32 product with each activation carried to within 2^-24 of its row's maximum. A kernel
is used only where it can run: an x86 CPU with the instructions it needs, a C++ compiler and
ninja. Anywhere else, or with `VLMKIT_KERNELS=0`, `load_int8_kernels()` returns False and callers
keep their PyTorch path; a failed build says so in one warning line.
"""

import functools
import os
import warnings
from pathlib import Path

import torch

_HERE = Path(__file__).parent
_SOURCES = ("int8_linear.cpp", "amx_linear.cpp")
KERNEL_MAX_ROWS = 16  # int8_linear_small's rows; past this, int8_linear_amx or torch._int_mm
# From AMX_MIN_ROWS rows AMX beats VNNI on a large weight streamed from memory, so decoding at
# batch 6-16 takes it too. Measured (2-core Xeon with AMX, 2 threads, ms AMX / ms VNNI), weights
# streamed from memory: 16384 x 2048 1.07 / 0.96 / 0.93 / 0.87 at 1 / 4 / 6 / 8 rows, 2048 x 16384
# 1.15 / 1.06 / 0.88 / 0.80, the 257216 x 2048 LM head 1.05 / 0.92 / 0.89 / 0.84, 2048 x 2048
# 0.97 / 0.89 at 6 / 8; a narrow 256 x 2048 weight (too few 32-row blocks for two threads)
# 1.18-1.35 at 1-8 rows. From cache (one weight, `bench_quant_kernels.py`,
# results/quant-kernels-amx-decode-cpu.json) 16384 x 2048 is even at 8 rows (1.02) and AMX at 16
# (0.43), but 2048 x 2048 (4 MB) runs 1.40x the VNNI time at 8 rows: small weights stay on VNNI.
AMX_MIN_ROWS, AMX_MIN_OUT, AMX_MIN_WEIGHT = 6, 2048, 1 << 23  # rows, N, N x K bytes
WEIGHT_ONLY_PARTS = 3  # int8 rows per activation row in `int8_weight_only`
# Measured (ms, weights streamed from memory, bf16, 2 threads; vlmkit / int8pack / bf16 F.linear):
# 16384 x 2048 at 1 row 1.55 / 2.41 / 3.40, 8 rows 2.23 / 6.55 / 3.49, 16 rows 2.91 / 12.3 / 3.75,
# 64 rows 5.61 / 30.4 (the cast) / 5.69, 256 rows (parts split in Python) 60.6 / 40.6 (the cast)
# / 10.6; 2048 x 2048 at 1 / 8 rows 0.28 / 0.35 / 0.48 and 0.40 / 0.79 / 0.51; 2048 x 16384 1.52
# / 1.56 / 3.71 and 2.42 / 3.83 / 3.75; a narrow 256 x 2048 0.071 / 0.050 / 0.085 and 0.13 /
# 0.11 / 0.087 (too few 32-row blocks: left to int8pack).
WEIGHT_ONLY_MAX_ROWS = 64
_FLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
          "-mamx-tile", "-mamx-int8", "-mavx512bf16"]  # AMX code runs only where amx_available()
_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")
_AMX_FLAGS = ("amx_tile", "amx_int8", "avx512_bf16")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.split(":", 1)[-1].split())


def _cpu_has(flags: tuple[str, ...]) -> bool:
    return _cpu_flags().issuperset(flags)


@functools.cache
def load_int8_kernels() -> bool:
    """Build and load `torch.ops.vlmkit.int8_linear_small` / `int8_linear_amx` once; whether the
    first (AVX-512 VNNI) is usable here."""
    if os.environ.get("VLMKIT_KERNELS", "1") == "0" or not _cpu_has(_CPU_FLAGS):
        return False
    from torch.utils import cpp_extension

    try:
        cpp_extension.load("vlmkit_int8_linear", [str(_HERE / f) for f in _SOURCES], extra_cflags=_FLAGS,
                           verbose=False)
    except (RuntimeError, OSError, ImportError) as e:  # no compiler / ninja, or a failed build
        warnings.warn(f"vlmkit: int8 kernels unavailable, using oneDNN ({str(e).splitlines()[0]})",
                      stacklevel=2)
        return False
    for op in ("vlmkit::int8_linear_small", "vlmkit::int8_linear_amx", "vlmkit::int8_weight_only_amx"):
        torch.library.register_fake(op)(_fake_linear)
    return True


@functools.cache
def amx_available() -> bool:
    """Whether `int8_linear_amx` runs here (the kernels load and the CPU has AMX int8 and bf16)."""
    return _cpu_has(_AMX_FLAGS) and load_int8_kernels()  # no build where there is no AMX


def _amx_runs(n: int, k: int) -> bool:
    """Whether `int8_linear_amx` runs here for a [n, k] weight (AMX, K % 64 == 0, N % 32 == 0)."""
    return amx_available() and k % 64 == 0 and n % 32 == 0


def amx_from_rows(n: int, k: int) -> int | None:
    """The row count from which `int8_linear_amx` is the kernel for x [M, k] @ q [n, k].T here
    (None: never): where it runs (AMX, K % 64 == 0, N % 32 == 0), `AMX_MIN_ROWS` on a weight at
    least `AMX_MIN_OUT` wide and of `AMX_MIN_WEIGHT` bytes, else past the VNNI kernel's rows.
    Decided once per layer: it reads the CPU's flags, which a compiled graph cannot trace."""
    if not _amx_runs(n, k):
        return None
    return AMX_MIN_ROWS if n >= AMX_MIN_OUT and n * k >= AMX_MIN_WEIGHT else KERNEL_MAX_ROWS + 1


def quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, in] float -> (a [M, in] int8, sx [M, 1] float32), x2 ~= a * sx, symmetric per row:
    dynamic W8A8's activation codes, which the kernels reproduce bit for bit."""
    xf = x2.float()
    sx = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0  # [M, 1]; clamp: all-zero rows
    return torch.round(xf / sx).to(torch.int8), sx


def weight_only_suits(m: int, n: int, k: int) -> bool:
    """Whether `int8_weight_only` is the kernel for weight-only int8 x [m, k] @ q [n, k].T here:
    AMX runs it (K % 64, N % 32), the rows are decode-sized (`WEIGHT_ONLY_MAX_ROWS`; prefill casts
    the weight faster) and the weight is at least `AMX_MIN_OUT` wide (enough 32-row blocks)."""
    return _amx_runs(n, k) and n >= AMX_MIN_OUT and m <= WEIGHT_ONLY_MAX_ROWS


def int8_weight_only(x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Weight-only int8 through the W8A8 AMX kernel: x2 [M, K] float, q [N, K] int8 (K % 64 == 0,
    N % 32 == 0), scale [N] float32 -> float32(x2 @ q.T) * scale as [M, N] in x2's dtype.

    Each activation row goes in as `WEIGHT_ONLY_PARTS` int8 rows: x = a1 s1 + a2 s2 + a3 s3 + r,
    each a_i the codes of what the parts before leave (as `quantize_rows`), so |r| <= s3 / 2 <=
    max|x| / (127 * 2 * 254^2), about 2^-24 max|x| (float32's own step near the maximum). The
    int32 sums are exact and the parts' (sum * s_i) * scale are added in float32. Only where
    `amx_available()`."""
    return torch.ops.vlmkit.int8_weight_only_amx(x2, q, scale, WEIGHT_ONLY_PARTS)


def _fake_linear(x, q, *_):
    """Shapes for torch.compile, every op: [M, N] in x's dtype."""
    return x.new_empty((x.shape[0], q.shape[0]))


def int8_linear_small(x: torch.Tensor, q: torch.Tensor, wsum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M <= 16, K] float, q [N, K] int8, wsum [N] int32 (q summed over K), scale [N] float32
    -> [M, N] in x's dtype (float32, bfloat16, float16) with always-dynamic W8A8's bits. Call
    `load_int8_kernels()` first."""
    return torch.ops.vlmkit.int8_linear_small(x, q, wsum, scale)


def int8_linear_amx(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] float, q [N, K] int8 with K % 64 == 0 and N % 32 == 0, scale [N] float32 -> [M, N]
    in x's dtype with always-dynamic W8A8's bits. Only where `amx_available()`."""
    return torch.ops.vlmkit.int8_linear_amx(x, q, scale)
