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

Mode "max-autotune" (and "max-autotune-no-cudagraphs") on CPU also freezes the weights: the model's
parameters and buffers become constants of the graph, which is what lets inductor put its C++ GEMM
templates (AMX / AVX-512 micro-kernels with prepacked weights) among the autotuned choices for the
int8 / int4 weight-only matmuls (`torch/_inductor/quantized_lowerings.py` offers them only for a
constant weight) and keep the faster of template and aten kernel per shape. Freezing is decided
when dynamo traces, from the global `torch._inductor.config.freezing` (a `torch.compile(options=...)`
value arrives too late: the weights are then graph inputs and the templates are never offered),
so the step runs under `config.patch(freezing=True)`. Consequences: weights changed after the first
call are not seen (inference only), the templates' prepacked copies add memory, autotuning
benchmarks every matmul shape on the first call (tens of seconds; inductor caches the choices on
disk), and the graph guards on the identity of the KV-cache tensors, so `CompiledDecode` keeps the
cache modules each graph was traced with (one set per batch size / cache length) and copies a new
generation's prefilled cache into them instead of recompiling (those caches stay held).

When compiling is impossible (dynamo unsupported on this Python, no C++ compiler for inductor's
CPU kernels) or fails on the first call, the returned function logs one warning line and runs
the eager `decode_one_token` from then on, so generation never breaks because of compilation.
"""

import logging
import os
import shutil
from collections.abc import Callable

import torch
from torch import nn

from vlmkit.errors import ConfigError
from vlmkit.generation.decode import decode_one_token
from vlmkit.models.common.kv_cache import KVCache

log = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FREEZING_MODES = ("max-autotune", "max-autotune-no-cudagraphs")  # weights frozen on CPU (see above)
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
        freezing: the step runs with frozen weights (see the module docstring).
    """

    def __init__(self, fn: Callable, compiled: bool, reason: str | None = None, freezing: bool = False):
        self._fn, self.compiled, self.reason, self.freezing = fn, compiled, reason, freezing
        self._lm: nn.Module | None = None
        self._slots: list[tuple[nn.Module, str]] = []  # (parent, attribute) of each KV cache
        self._kept: dict[tuple, list[KVCache]] = {}  # cache shape -> the modules its graph was traced with

    def _fall_back(self, reason: str) -> None:
        log.warning("torch.compile of decode_one_token unavailable, decoding eagerly: %s", reason)
        self._fn, self.compiled, self.reason = decode_one_token, False, reason

    def _keep_caches(self, lm: nn.Module) -> None:
        """Put the cache modules a graph was traced with (one set per cache shape) back in place of a
        new generation's, its prefilled contents copied in, so a frozen graph's identity guards hold."""
        if self._lm is not lm:
            found = [n for n, m in lm.named_modules() if isinstance(m, KVCache)]
            self._slots = [(lm.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in found]
            self._lm, self._kept = lm, {}
        current = [getattr(p, a) for p, a in self._slots]
        if not current:
            return
        key = (tuple(current[0].k.shape), current[0].k.dtype, current[0].k.device)
        kept = self._kept.setdefault(key, current)  # batch size / length / dtype: one graph each
        for (parent, attr), cur, old in zip(self._slots, current, kept):
            if cur is not old:
                old.k.copy_(cur.k)
                old.v.copy_(cur.v)
                setattr(parent, attr, old)

    def _run(self, *args) -> torch.Tensor:
        if not self.freezing:
            return self._fn(*args)
        self._keep_caches(args[0])
        with torch._inductor.config.patch(freezing=True):
            return self._fn(*args)

    def __call__(self, lm, tokens, positions, slot, key_valid, in_prefix) -> torch.Tensor:
        """Same contract as `decode_one_token`: logits [B, V]."""
        if not self.compiled:
            return self._fn(lm, tokens, positions, slot, key_valid, in_prefix)
        try:
            return self._run(lm, tokens, positions, slot, key_valid, in_prefix)
        except Exception as e:
            if not _is_compile_error(e):
                raise  # a real error of the step (bad shapes, ...): not compilation's fault
            first_line = (str(e).strip().splitlines() or [""])[0][:200]
            self._fall_back(f"{type(e).__name__}: {first_line}")
            return self._fn(lm, tokens, positions, slot, key_valid, in_prefix)


_CPU_MODE = {"max-autotune": "max-autotune-no-cudagraphs", "reduce-overhead": "default"}


def compile_decode(mode: str = "default", fullgraph: bool = True, device: str | torch.device = "cpu",
                   dynamic: bool = False, backend: str = "inductor") -> CompiledDecode:
    """Return a decode_fn for `generate(..., decode_fn=...)` wrapping `decode_one_token` in compile.

    Args:
        mode: a `torch.compile` mode (see `MODES`); "reduce-overhead" adds CUDA graphs on GPU and
            is equivalent to "default" on CPU; "max-autotune" on CPU freezes the weights and
            autotunes inductor's C++ GEMM templates against aten's kernels (module docstring).
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
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu:  # CUDA graphs do nothing on CPU, but for a mode that names them torch._dynamo.reset()
        # calls reset_cudagraph_trees() while it iterates its backend registry; a full test run
        # failed there with "dictionary changed size during iteration".
        mode = _CPU_MODE.get(mode, mode)
    options = {"mode": mode} if backend == "inductor" else {}
    fn = torch.compile(decode_one_token, fullgraph=fullgraph, dynamic=dynamic, backend=backend, **options)
    freezing = mode in FREEZING_MODES and backend == "inductor" and on_cpu
    return CompiledDecode(fn, compiled=True, freezing=freezing)


def decode_fn_for(compile: bool | str, device: str | torch.device = "cpu") -> CompiledDecode | None:
    """The decode_fn of a `compile=` option (`vlmkit.load`, `--compile` / `--compile-mode`): None for
    False (eager), the default mode for True, else the named mode (see `MODES`; ConfigError if unknown)."""
    if compile is False or compile is None:
        return None
    return compile_decode("default" if compile is True else compile, device=device)
