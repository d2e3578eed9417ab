"""vlmkit's int8 kernels (vlmkit/kernels/int8_linear.cpp: VNNI for decoding, AMX for prefill)
against always-dynamic W8A8."""

import os
import subprocess
import sys

import pytest
import torch

from vlmkit.generation.quantize_dynamic import dynamic_int8_matmul, quantize_rows
from vlmkit.kernels import (KERNEL_MAX_ROWS, amx_available, int8_linear_amx, int8_linear_small, int8_weight_only,
                            load_int8_kernels)

pytestmark = pytest.mark.skipif(not load_int8_kernels(), reason="no AVX-512 VNNI CPU or no C++ toolchain")


def _weight(n, k, seed=0):
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(seed))
    return q, q.sum(dim=1, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("n,k", [(256, 2048), (37, 100), (1000, 4304), (64, 64), (9, 8)])
def test_kernel_equals_always_dynamic_at_every_row_count(n, k, dtype):
    """Every row count the kernel takes; K not a multiple of 64 (masked tail) and N not a multiple
    of the column block included; rows of different magnitude (different scales)."""
    q, wsum = _weight(n, k)
    scale = (torch.rand(n, generator=torch.Generator().manual_seed(1)) * 0.01).to(dtype)
    gen = torch.Generator().manual_seed(2)
    for m in range(1, KERNEL_MAX_ROWS + 1):
        x = (torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 10).to(dtype)
        got = int8_linear_small(x, q, wsum, scale.float())
        assert got.dtype == dtype
        assert torch.equal(got, dynamic_int8_matmul(x, q, scale, (1, None))), m


def test_kernel_codes_match_quantize_rows():
    """The kernel quantises the activations itself; its integer sums equal those of quantize_rows'
    codes (unit scales make the output the sum times the row scale)."""
    q, wsum = _weight(48, 160)
    x = torch.randn(5, 160) * 3
    x[2] = 0  # an all-zero row: the clamped scale
    a, sx = quantize_rows(x)
    want = (a.int() @ q.int().T).float() * sx
    assert torch.equal(int8_linear_small(x, q, wsum, torch.ones(48)), want)


def test_kernel_rejects_bad_operands():
    q, wsum = _weight(16, 64)
    with pytest.raises(RuntimeError, match="1 to 16 rows"):
        int8_linear_small(torch.randn(KERNEL_MAX_ROWS + 1, 64), q, wsum, torch.ones(16))
    with pytest.raises(RuntimeError, match="q int8"):
        int8_linear_small(torch.randn(2, 64), q.float(), wsum, torch.ones(16))


def test_kernel_compiles_as_an_op():
    """torch.compile traces through the op (its fake shapes) and gives the eager bits."""
    q, wsum = _weight(32, 64)
    f = torch.compile(lambda x: int8_linear_small(x, q, wsum, torch.ones(32)).relu(), fullgraph=True)
    x = torch.randn(3, 64)
    assert torch.equal(f(x), int8_linear_small(x, q, wsum, torch.ones(32)).relu())


needs_amx = pytest.mark.skipif(not amx_available(), reason="no AMX int8 CPU")


@needs_amx
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("n,k", [(64, 64), (96, 2048), (2048, 5184), (32, 128), (32, 65600)])
def test_amx_equals_always_dynamic(n, k, dtype):
    """Decode row counts (one 16-row block per step up to 16 rows), counts around the 32-row
    padding, prefill-sized; (2048, 5184) at 272 rows walks K in chunks, and so does (32, 65600)
    at every row count, 16-row blocks included (partial sums through the scratch)."""
    q, _ = _weight(n, k)
    scale = (torch.rand(n, generator=torch.Generator().manual_seed(1)) * 0.01).to(dtype)
    gen = torch.Generator().manual_seed(2)
    for m in (1, 6, 8, 16, 17, 31, 32, 33, 100, 272):
        x = (torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 5).to(dtype)
        got = int8_linear_amx(x, q, scale.float())
        assert got.dtype == dtype and torch.equal(got, dynamic_int8_matmul(x, q, scale, (1, None))), m


@needs_amx
def test_amx_rejects_unsupported_shapes():
    with pytest.raises(RuntimeError, match="K a multiple of 64"):
        int8_linear_amx(torch.randn(20, 96), torch.zeros(32, 96, dtype=torch.int8), torch.ones(32))
    with pytest.raises(RuntimeError, match="K a multiple of 64"):
        int8_linear_amx(torch.randn(20, 64), torch.zeros(48, 64, dtype=torch.int8), torch.ones(48))


def _in_fresh_process(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_kernels_off_with_env_var():
    """VLMKIT_KERNELS=0: the kernels are not loaded and the packed layers use oneDNN's layout."""
    code = ("import torch; from torch import nn; from vlmkit.kernels import load_int8_kernels\n"
            "from vlmkit.generation.quantize_dynamic import DynamicInt8Linear\n"
            "from vlmkit.generation.quantize_packed import pack_int8\n"
            "assert not load_int8_kernels()\n"
            "print(type(pack_int8(DynamicInt8Linear(nn.Linear(64, 32))).int8).__name__)")
    out = _in_fresh_process(code, VLMKIT_KERNELS="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "_PackedInt8"


def test_failed_build_warns_one_line_and_falls_back():
    code = ("import warnings; from torch.utils import cpp_extension\n"
            "def broken(*a, **k): raise RuntimeError('Ninja is required to load C++ extensions\\nmore')\n"
            "cpp_extension.load = broken\n"
            "from vlmkit.kernels import amx_available, load_int8_kernels\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    assert not load_int8_kernels() and not amx_available()\n"
            "print(w[0].message)")
    out = _in_fresh_process(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("vlmkit: int8 kernels unavailable, using oneDNN "
                                  "(Ninja is required to load C++ extensions)")


@needs_amx
@pytest.mark.parametrize("n,k", [(96, 2048), (2048, 5184), (32, 128)])
def test_weight_only_is_float32_exact(n, k):
    """int8_weight_only: three int8 parts per activation row, so float32 activations come back to
    float32's precision (activations with a 1e4 outlier included: the parts are relative to the
    row's maximum) and bf16 ones within one bf16 step of the float32 product."""
    q, _ = _weight(n, k)
    scale = torch.rand(n, generator=torch.Generator().manual_seed(1)) * 0.01
    gen = torch.Generator().manual_seed(2)
    for m in (1, 3, 8, 17, 100):
        x = torch.randn(m, k, generator=gen)
        x[:, 0] *= 1e4 if m == 3 else 1.0
        ref = (x.double() @ q.double().T) * scale.double()
        got = int8_weight_only(x, q, scale)
        assert got.dtype == torch.float32
        assert float((got.double() - ref).abs().max()) <= 1e-5 * float(ref.abs().max()), m
        xb = x.bfloat16()
        refb = (xb.double() @ q.double().T) * scale.double()
        gotb = int8_weight_only(xb, q, scale)
        assert gotb.dtype == torch.bfloat16
        assert bool(((gotb.double() - refb).abs() <= refb.abs() * 2**-8 + 1e-6 * refb.abs().max()).all()), m
