"""Worker subprocess of bench_llamacpp.py: one framework, one model, text decode at batch 1.

    <llama.cpp venv python> benchmarks/_llamacpp_worker.py llamacpp MODEL.gguf THREADS extra|noextra batch|tokens
    <project python>        benchmarks/_llamacpp_worker.py vlmkit FOLDER DTYPE QUANT COMPILE THREADS

The llama.cpp side runs in the interpreter of its own virtual environment, which has
llama-cpp-python, numpy and gguf but no torch, so this module imports torch only on the vlmkit
side, and its protocol from `_worker_protocol` (torch-free) rather than `_common`.

Both sides do the same thing for `generate(prompt, new_tokens)`: the prompt ids in one forward
(prefill), then greedy decoding one token at a time with the argmax of the last logits taken in
Python after every step (the host sync a streaming generator has too), `new_tokens` tokens in
all. Decode speed is (new_tokens - 1) / (time of the last token - time of the first token), as in
bench_generate.py. Commands (one JSON object per line on stdin, one reply per line on stdout):
load, generate, profile (vlmkit only), rss.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _worker_protocol import peak_rss_mb, serve  # noqa: E402 - torch-free, unlike _common


class LlamaCppRunner:
    """llama-cpp-python's `Llama` on a GGUF file: `eval` of token ids, logits read back by pointer.

    extra_bufts: llama.cpp's extra weight buffer types (`use_extra_bufts`, on by default in
    llama.cpp): on this CPU Q8_0 weights then go to the AMX buffer, its fastest decode path. In
    this build `ggml_backend_amx_mul_mat` crashes (SIGSEGV, seen with gdb) on batches of more
    than one token, while one-token batches work; `token_prompt` then feeds the prompt one token
    at a time (decode speed is unaffected; the prefill time is that of T one-token steps).
    """

    def __init__(self, path: str, threads: int, extra_bufts: bool = True, token_prompt: bool = False,
                 n_ctx: int = 512):
        import llama_cpp
        import llama_cpp.llama as llama_module

        defaults = llama_cpp.llama_model_default_params

        def model_params():  # Llama() takes no use_extra_bufts argument: set it on its defaults
            params = defaults()
            params.use_extra_bufts = extra_bufts
            return params

        llama_module.llama_cpp.llama_model_default_params = model_params
        try:
            self.llm = llama_module.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                          n_threads_batch=threads, logits_all=False, verbose=False)
        finally:
            llama_module.llama_cpp.llama_model_default_params = defaults
        self.token_prompt = token_prompt
        # The CPU features this build of ggml uses (AVX512 / VNNI / AMX ...), for the report.
        self.info = llama_cpp.llama_print_system_info().decode()

    def _argmax(self) -> int:
        import llama_cpp
        import numpy as np

        n_vocab = self.llm.n_vocab()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(n_vocab,))
        return int(logits.argmax())

    def generate(self, prompt: list[int], new_tokens: int) -> dict:
        import llama_cpp

        self.llm.reset()  # n_tokens = 0: the next eval drops the whole KV cache
        llama_cpp.llama_perf_context_reset(self.llm.ctx)
        t0 = time.perf_counter()
        for chunk in ([[t] for t in prompt] if self.token_prompt else [prompt]):
            self.llm.eval(chunk)
        tokens = [self._argmax()]
        t_first = time.perf_counter()
        for _ in range(new_tokens - 1):
            self.llm.eval(tokens[-1:])
            tokens.append(self._argmax())
        t_end = time.perf_counter()
        perf = llama_cpp.llama_perf_context(self.llm.ctx)  # llama.cpp's own clock, for reference
        return {"t0": t0, "t_first": t_first, "t_end": t_end, "tokens": tokens,
                "own_decode_tok_s": perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms else None}


class VlmkitRunner:
    """vlmkit's `load_hf` + the shared engine's `prefill` / `decode_one_token` (compiled or not)
    on a text decoder; `quant`: "none" or a scheme of `vlmkit.generation.quant` ("int8",
    "int8-dyn", "int4-g64", ...; the tied embedding / LM head included)."""

    def __init__(self, folder: str, dtype: str, quant: str, compiled: bool):
        import torch

        from vlmkit.generation.compile import compile_decode
        from vlmkit.generation.decode import decode_one_token
        from vlmkit.weights.hf import load_hf

        self.torch = torch
        self.lm = load_hf(folder, dtype=dtype)
        quant, _, packed = quant.partition("+")  # "int8-dyn+packed": W8A8 in oneDNN's int8 layout
        if quant != "none":
            from vlmkit.generation.quant import quantize_model

            quantize_model(self.lm, quant)
        # Eager: packed layers compile only with frozen weights (mode max-autotune), and this
        # script's compiled step uses the default mode.
        if packed:
            from vlmkit.generation.prepack import prepack_decoder

            prepack_decoder(self.lm)
        self.decode_fn = compile_decode() if compiled and not packed else decode_one_token

    def _start(self, prompt: list[int], new_tokens: int):
        """Prefill `prompt` into a cache of prompt + new_tokens slots: (logits [1, V], state)."""
        from vlmkit.generation.decode import prefill

        torch = self.torch
        ids = torch.tensor([prompt])  # [1, T]
        T = ids.shape[1]
        mask, in_prefix = torch.ones(1, T, dtype=torch.long), torch.zeros(1, T, dtype=torch.bool)
        return prefill(self.lm, self.lm.embed(ids), mask, in_prefix, torch.arange(T)[None], T + new_tokens)

    def _step(self, state, next_ids):
        from vlmkit.generation.decode import advance

        pos, slot = advance(state)
        return self.decode_fn(self.lm, next_ids[:, None], pos, slot, state.key_valid, state.in_prefix)

    def generate(self, prompt: list[int], new_tokens: int) -> dict:
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            logits, state = self._start(prompt, new_tokens)
            next_ids = logits.argmax(-1)  # [1]
            tokens = [int(next_ids)]
            t_first = time.perf_counter()
            for _ in range(new_tokens - 1):
                next_ids = self._step(state, next_ids).argmax(-1)
                tokens.append(int(next_ids))  # the host sync of every step
            t_end = time.perf_counter()
            self.lm.clear_caches()
        return {"t0": t0, "t_first": t_first, "t_end": t_end, "tokens": tokens,
                "compiled": getattr(self.decode_fn, "compiled", False)}

    def profile(self, prompt: list[int], new_tokens: int, steps: int, top: int) -> dict:
        """torch.profiler over `steps` (< new_tokens) decode steps: the `top` ops by self CPU time.
        The cache has prompt + new_tokens slots, as in `generate`, so the compiled step is reused."""
        from torch.profiler import ProfilerActivity, profile

        with self.torch.inference_mode():
            logits, state = self._start(prompt, new_tokens)
            next_ids = logits.argmax(-1)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    next_ids = self._step(state, next_ids).argmax(-1)
                    int(next_ids)
            self.lm.clear_caches()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        return {"steps": steps, "ops": [{"op": e.key, "calls": e.count, "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                                         "self_share": e.self_cpu_time_total / total} for e in events[:top]]}


def build(argv: list[str]):
    """The runner the command line names (see the module docstring)."""
    if argv[0] == "llamacpp":
        return LlamaCppRunner(argv[1], int(argv[2]), argv[3] == "extra", argv[4] == "tokens"), int(argv[2])
    if argv[0] == "vlmkit":
        import torch

        torch.set_num_threads(int(argv[5]))
        return VlmkitRunner(argv[1], argv[2], argv[3], argv[4] == "compile"), int(argv[5])
    raise SystemExit(f"unknown framework {argv[0]!r}: llamacpp or vlmkit")


def main(argv: list[str]) -> None:
    state: dict = {}

    def load() -> dict:
        t0 = time.perf_counter()
        state["runner"], threads = build(argv)
        return {"load_s": time.perf_counter() - t0, "rss_mb": peak_rss_mb(), "threads": threads,
                "system_info": getattr(state["runner"], "info", None)}

    def generate(prompt: list[int], new_tokens: int) -> dict:
        r = state["runner"].generate(prompt, new_tokens)
        decode_s = r["t_end"] - r["t_first"]
        return {**{k: v for k, v in r.items() if not k.startswith("t")}, "tokens": r["tokens"],
                "prefill_s": r["t_first"] - r["t0"], "decode_s": decode_s,
                "tokens_per_s": (new_tokens - 1) / decode_s}

    serve({"load": load, "generate": generate, "rss": lambda: {"peak_rss_mb": peak_rss_mb()},
           "profile": lambda **kw: state["runner"].profile(**kw)})


if __name__ == "__main__":
    main(sys.argv[1:])
