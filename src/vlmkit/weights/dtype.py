"""Choosing the compute dtype.

bf16 halves memory and bandwidth, but on CPUs without native bf16 instructions (AVX512-BF16 or
AMX) PyTorch emulates it and runs slower than fp32, so the CPU default depends on the CPU.
"""

import functools
from pathlib import Path

import torch

from vlmkit.errors import ConfigError

_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True if /proc/cpuinfo lists native bf16 support (avx512_bf16 or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype | None, device="cpu") -> torch.dtype:
    """Name or dtype -> torch.dtype; None/"auto" picks bf16 on CUDA or fast-bf16 CPUs, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if dtype not in _NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from float32, bfloat16, float16, auto")
    return _NAMES[dtype]
