"""`torch.compile` for the one-token decode step, applied at the call site (gpt-fast style).

Usage:

    decode_fn = compile_decode()                  # once per process
    generate(model, tokenizer, batch, cfg, decode_fn=decode_fn)

Why only decode: every decode step has the same shapes (static KV cache, one token per row, the
slot passed as a tensor), so one graph serves the whole generation and the per-op Python and
dispatch overhead, which dominates small-batch CPU decoding, is paid once at compile time.
Prefill shapes change with every prompt length, so it stays eager.

A graph is specialised on batch size, cache length and dtype: a new combination compiles again
(dynamo keeps up to `torch._dynamo.config.cache_size_limit` graphs, then runs eagerly).

When compiling is impossible (dynamo unsupported on this Python, no C++ compiler for inductor's
CPU kernels) or fails on the first call, the returned function logs one warning line and runs
the eager `decode_one_token` from then on, so generation never breaks because of compilation.
"""

import logging
import os
import shutil
from collections.abc import Callable

import torch

from vlmkit.errors import ConfigError
from vlmkit.generation.decode import decode_one_token

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_CXX = ("c++", "g++", "clang++")


def compile_unavailable_reason(device: str | torch.device = "cpu") -> str | None:
    """Why `torch.compile` cannot work here, or None if it should (checked without compiling)."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch._dynamo does not support this Python/platform"
    if torch.device(device).type == "cpu":
        # Inductor writes and builds C++ for CPU kernels; without a compiler every call fails.
        if not os.environ.get("CXX") and not any(shutil.which(c) for c in _CXX):
            return "no C++ compiler found (install g++ or set CXX) for inductor's CPU kernels"
    return None


def _is_compile_error(e: BaseException) -> bool:
    """Dynamo/inductor failures (graph break under fullgraph, C++ build errors, codegen bugs)."""
    if isinstance(e, torch._dynamo.exc.TorchDynamoException):
        return True
    return type(e).__module__.startswith(("torch._dynamo", "torch._inductor"))


class CompiledDecode:
    """A decode_fn: the compiled `decode_one_token`, or eager after a logged fallback.

    Attributes:
        compiled: False once the eager fallback is in use.
        reason: why it fell back (None while compiled).
    """

    def __init__(self, fn: Callable, compiled: bool, reason: str | None = None):
        self._fn, self.compiled, self.reason = fn, compiled, reason

    def _fall_back(self, reason: str) -> None:
        log.warning("torch.compile of decode_one_token unavailable, decoding eagerly: %s", reason)
        self._fn, self.compiled, self.reason = decode_one_token, False, reason

    def __call__(self, lm, tokens, positions, slot, key_valid, in_prefix) -> torch.Tensor:
        """Same contract as `decode_one_token`: logits [B, V]."""
        if not self.compiled:
            return self._fn(lm, tokens, positions, slot, key_valid, in_prefix)
        try:
            return self._fn(lm, tokens, positions, slot, key_valid, in_prefix)
        except Exception as e:
            if not _is_compile_error(e):
                raise  # a real error of the step (bad shapes, ...): not compilation's fault
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            self._fall_back(f"{type(e).__name__}: {first_line}")
            return self._fn(lm, tokens, positions, slot, key_valid, in_prefix)


def compile_decode(mode: str = "default", fullgraph: bool = True, device: str | torch.device = "cpu",
                   dynamic: bool = False, backend: str = "inductor") -> CompiledDecode:
    """Return a decode_fn for `generate(..., decode_fn=...)` wrapping `decode_one_token` in compile.

    Args:
        mode: a `torch.compile` mode (see `MODES`); "reduce-overhead" adds CUDA graphs on GPU and
            is equivalent to "default" on CPU.
        fullgraph: fail (and so fall back to eager, with a warning) on any graph break rather than
            silently running a partly compiled step. The Gemma decode step has none.
        device: where the model runs; only used to check for a CPU compiler up front.
        dynamic: False specialises on exact shapes (fastest; recompiles per batch size / cache).
        backend: "inductor" generates kernels; "aot_eager" traces without code generation
            (seconds instead of tens of seconds; for tests and debugging graph breaks).
    """
    if mode not in MODES:
        raise ConfigError(f"unknown torch.compile mode {mode!r}; choose from {', '.join(MODES)}")
    reason = compile_unavailable_reason(device) if backend == "inductor" else None
    decode = CompiledDecode(decode_one_token, compiled=False, reason=reason)
    if reason is not None:
        decode._fall_back(reason)
        return decode
    options = {"mode": mode} if backend == "inductor" else {}
    fn = torch.compile(decode_one_token, fullgraph=fullgraph, dynamic=dynamic, backend=backend, **options)
    return CompiledDecode(fn, compiled=True)
