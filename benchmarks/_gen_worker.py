"""Worker subprocess of bench_generate.py: one framework, one model, timed commands over stdin.

    python benchmarks/_gen_worker.py VARIANT FOLDER DTYPE INPUTS THREADS [DEVICE]

VARIANT is "vlmkit" with optional "+int8" / "+int4" / "+int4-gG", "+compile", "+max" (with +compile: mode
max-autotune), "+graphs" (with +compile: CUDA graphs, torch.compile mode reduce-overhead) and "+packed"
(CPU bf16 or int8-dyn: `vlmkit.generation.prepack`) suffixes, or "transformers" with optional "+int8" (torchao
int8 weight-only), "+static" (static cache) and "+compile" (torch.compile of the forward, with a
static cache: transformers' documented fast path) suffixes. The model
is loaded from the same safetensors FOLDER by each framework's own loader (vlmkit's `load_hf`, which
finds the family from config.json; transformers' `AutoModelForImageTextToText`, which picks the
class from its model_type, so any family both know runs here); INPUTS is a torch.save
file of ready batches ({"b1": {...}, "b8": {...}}, made by `_families.make_batch`), so both sides
see identical token ids and pixels; DEVICE
(default cpu) is where the model and the batches live. On CUDA every timed span ends with a
synchronize, so it covers the GPU work and not just its launch.

Commands (see `handlers`): load, prefill, vision, generate, rss. Each replies with a JSON object.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, peak_rss_mb, serve, sync  # noqa: E402


# mm_token_type_ids: transformers' Qwen2-VL marks image tokens with it (vlmkit's adapter finds them in input_ids).
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


def image_entries(batch: dict) -> dict:
    """The batch's image tensors (pixel_values first), in the order `encode_images` takes them;
    their names are also the arguments of transformers' `get_image_features`."""
    return {k: v for k, v in batch.items() if k not in TEXT_KEYS}


class _NoTextTokenizer:
    """vlmkit's generate decodes text every step; ids are what we compare, so decode is trivial."""

    eos_id = -1  # never sampled: every run produces exactly max_new_tokens tokens, like HF below

    def decode(self, ids):
        return ""


class _TimingStreamer:
    """transformers streamer: put() gets the prompt first, then each new token batch."""

    def __init__(self):
        self.calls, self.t_first, self.t_end = 0, None, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.t_first = time.perf_counter()

    def end(self):
        self.t_end = time.perf_counter()


def logit_error(out: torch.Tensor, ref: torch.Tensor) -> dict:
    """How far quantised logits `out` are from the float model's `ref` (same shape, float32)."""
    return {"max_abs_over_max_ref": float((out - ref).abs().max() / ref.abs().max()),
            "argmax_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean())}


class VlmkitRunner:
    def __init__(self, folder: str, dtype: str, int8: bool | str, compiled: bool, device: torch.device,
                 graphs: bool = False, packed: bool = False):
        from vlmkit.generation.compile import compile_decode
        from vlmkit.generation.quant import load_hf_quantized
        from vlmkit.models.registry import family_of
        from vlmkit.weights.hf import load_hf

        # int8: False, True ("int8") or a scheme name of vlmkit.generation.quant ("int4", "int4-g32", ...).
        # A quantised variant loads as `--quantize` does (quantised while loading, never float whole).
        self.int8, self.logit_error = ("int8" if int8 is True else int8), None
        self.model = (load_hf_quantized(folder, self.int8, dtype=dtype, device=device) if self.int8
                      else load_hf(folder, dtype=dtype, device=device))
        self.device = device
        if packed:  # bf16 projections / int8-dyn layers in oneDNN's blocked layout (`--prepack`)
            from vlmkit.generation.prepack import prepack_decoder

            print("prepack:", prepack_decoder(self.model), file=sys.stderr)
        self.adapter = family_of(self.model).generation  # how the engine feeds this family's decoder
        self.lm = self.adapter.decoder(self.model)
        # "+graphs": CUDA graphs around the compiled step (mode reduce-overhead; same as default on CPU).
        mode = "reduce-overhead" if graphs else "max-autotune" if compiled == "max" else "default"
        self.decode_fn = compile_decode(mode, device=device) if compiled else None

    def measure_error(self, batch: dict, reference: torch.Tensor) -> None:
        """The logit error on `batch` against the float model's logits `reference` (`float_logits`)."""
        with torch.inference_mode():
            self.logit_error = logit_error(self.logits(batch), reference)

    def logits(self, batch: dict) -> torch.Tensor:
        """Full uncached forward through the family's adapter: logits [B, T, V] float32."""
        x = self.adapter.prepare(self.model, batch)
        return self.lm.logits(self.lm(x.embeds, x.positions, x.attention_mask.bool(), x.in_prefix)).float()

    @torch.inference_mode()
    def prefill(self, batch: dict) -> float:
        """Image encoding + prompt forward up to the first logits (what generate does first)."""
        from vlmkit.generation.decode import prefill

        sync(self.device)
        t0 = time.perf_counter()
        x = self.adapter.prepare(self.model, batch)  # images encoded and placed, positions built
        logits, _ = prefill(self.lm, x.embeds, x.attention_mask, x.in_prefix, x.positions, x.embeds.shape[1] + 1)
        logits.argmax(-1)
        sync(self.device)
        dt = time.perf_counter() - t0
        self.lm.clear_caches()
        return dt

    @torch.inference_mode()
    def vision(self, images: dict) -> None:
        """The vision tower + projector alone (what the image-feature cache saves)."""
        self.model.encode_images(*images.values())

    def generate(self, batch: dict, new_tokens: int) -> dict:
        from vlmkit.generation import SamplingConfig, generate_stream

        results, t_first = [], None
        sync(self.device)
        t0 = time.perf_counter()
        stream = generate_stream(self.model, _NoTextTokenizer(), batch, SamplingConfig(max_new_tokens=new_tokens),
                                 self.decode_fn, results)
        for _ in stream:
            t_first = t_first or time.perf_counter()  # a yield follows the sampled id's copy to host
        sync(self.device)
        t_end = time.perf_counter()
        compiled = getattr(self.decode_fn, "compiled", None)  # False if compile fell back to eager
        return {"t0": t0, "t_first": t_first, "t_end": t_end, "tokens": [r.token_ids for r in results],
                "compiled": compiled}


# transformers' decoders and LM head: PaliGemma / LLaVA `model.language_model`, Idefics3 / SmolVLM
# `model.text_model`; as on the vlmkit side, the vision tower and projector stay in float.
HF_DECODER = ("model.language_model.", "model.text_model.", "lm_head")


def torchao_int8(model: torch.nn.Module, only: tuple[str, ...] = HF_DECODER) -> None:
    """torchao's int8 weight-only quantisation (per-channel symmetric, like vlmkit's) of every
    Linear with >= 16 input features under `only` (the decoder and its head), in place; its
    documented use is with torch.compile. Raises ImportError without torchao."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def chosen(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and module.in_features >= 16 and name.startswith(only)

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=chosen)


class HFRunner:
    """transformers' `generate`: default (dynamic cache, eager), or with its documented fast path
    (`static`: `cache_implementation="static"`; `compile`: `model.forward = torch.compile(
    model.forward, fullgraph=True)`, as transformers' "Optimizing inference" guide does; on CPU
    generate never compiles by itself), and `int8`: torchao int8 weight-only (`torchao_int8`)."""

    def __init__(self, folder: str, dtype: str, device: torch.device, int8: bool = False,
                 static: bool = False, compiled: bool = False, graphs: bool = False, batch: dict | None = None):
        import transformers as tf

        self.device, self.static = device, static
        self.model = tf.AutoModelForImageTextToText.from_pretrained(
            folder, dtype=getattr(torch, dtype)).eval().to(device)
        self.model.generation_config.eos_token_id = None  # fixed length, like vlmkit above
        self.model.generation_config.pad_token_id = 0
        if static:
            self.model.generation_config.cache_implementation = "static"
        self.int8, self.logit_error = int8, None
        if compiled:  # same torch.compile mode as the vlmkit variant it is compared with
            if batch is not None:  # one eager forward first: it installs transformers' lazy
                with torch.inference_mode():  # output-capturing hooks (under a threading lock,
                    self.model(**batch)  # which dynamo cannot trace: CLIP's tower in LLaVA)
            mode = "reduce-overhead" if graphs else "default"
            self.model.forward = torch.compile(self.model.forward, mode=mode, fullgraph=True)

    @torch.inference_mode()
    def quantize(self, batch: dict) -> None:
        """Quantise with torchao and record the logit error against the float model on `batch`."""
        ref = self.model(**batch).logits.float()
        torchao_int8(self.model)
        out = self.model(**batch).logits.float()
        self.logit_error = logit_error(out, ref)

    @torch.inference_mode()
    def prefill(self, batch: dict) -> float:
        kwargs = {}
        if self.static:  # the cache generate() would prefill into
            from transformers import StaticCache

            kwargs["cache"] = StaticCache(config=self.model.config, max_cache_len=batch["input_ids"].shape[1] + 1)
        sync(self.device)
        t0 = time.perf_counter()
        out = self.model(**batch, use_cache=True, logits_to_keep=1, **kwargs)
        out.logits[:, -1].argmax(-1)
        sync(self.device)
        return time.perf_counter() - t0

    @torch.inference_mode()
    def vision(self, images: dict) -> None:
        # HF's argument names are the processor's keys; DeepSeek-VL has the method on its inner model only.
        features = getattr(self.model, "get_image_features", None) or self.model.model.get_image_features
        features(**images)

    @torch.inference_mode()
    def generate(self, batch: dict, new_tokens: int) -> dict:
        streamer = _TimingStreamer()
        T = batch["input_ids"].shape[1]
        sync(self.device)
        t0 = time.perf_counter()
        # The streamer gets each new token batch already copied to the host (a sync per token).
        out = self.model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, streamer=streamer)
        sync(self.device)
        t_end = time.perf_counter()
        return {"t0": t0, "t_first": streamer.t_first, "t_end": t_end, "tokens": out[:, T:].tolist()}


def float_logits(folder: str, dtype: str, inputs: str, threads: str, device: str) -> torch.Tensor:
    """The float model's logits on batch b1, from a child process (so that the float model never
    counts in this worker's peak memory): [B, T, V] float32."""
    import subprocess
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "logits.safetensors")
        subprocess.run([sys.executable, __file__, "reference", folder, dtype, inputs, threads, device, out],
                       check=True)
        return load_file(out)["logits"].to(device)


def write_float_logits(folder: str, dtype: str, inputs: str, threads: str, device: str, out: str) -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, int(threads)))
    dev = torch.device(device)
    batch = {n: t.to(dev) for n, t in torch.load(inputs)["b1"].items()}
    runner = VlmkitRunner(folder, dtype, False, False, dev)
    with torch.inference_mode():
        save_file({"logits": runner.logits(batch).cpu().contiguous()}, out)


def main(variant: str, folder: str, dtype: str, inputs: str, threads: str, device: str = "cpu") -> None:
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    dev = torch.device(device)
    batches = {k: {n: t.to(dev) for n, t in b.items()} for k, b in torch.load(inputs).items()}
    state: dict = {}

    def load() -> dict:
        t0 = time.perf_counter()
        parts = variant.split("+")
        if parts[0] == "transformers":
            runner = HFRunner(folder, dtype, dev, "int8" in parts, "static" in parts, "compile" in parts,
                              "graphs" in parts, batches["b1"])
        else:
            scheme = next((p for p in parts if p.startswith("int")), False)  # int8, int4, int4-g32, ...
            # "+compile+max": mode max-autotune (frozen weights, inductor's C++ GEMM templates autotuned).
            compiled = "max" if "max" in parts else "compile" in parts
            runner = VlmkitRunner(folder, dtype, scheme, compiled, dev, "graphs" in parts, "packed" in parts)
        if runner.int8 and parts[0] == "transformers":
            runner.quantize(batches["b1"])
        elif runner.int8:
            runner.measure_error(batches["b1"], float_logits(folder, dtype, inputs, threads, device))
        state["runner"] = runner
        return {"load_s": time.perf_counter() - t0, "rss_mb": peak_rss_mb(), "logit_error": runner.logit_error}

    def prefill(batch: str) -> dict:
        return {"s": state["runner"].prefill(batches[batch])}

    def vision(batch: str, reps: int) -> dict:
        images = image_entries(batches[batch])
        state["runner"].vision(images)  # warm-up
        # One image per prompt (not pixel_values' first axis: Qwen2-VL's holds patches, LLaVA-NeXT's images).
        return {"s": best_time(lambda: state["runner"].vision(images), reps, dev),
                "images": batches[batch]["input_ids"].shape[0]}

    def generate(batch: str, new_tokens: int) -> dict:
        r = state["runner"].generate(batches[batch], new_tokens)
        rows = len(r["tokens"])
        decode_s = r["t_end"] - r["t_first"]
        return {"ttft_s": r["t_first"] - r["t0"], "decode_s": decode_s, "total_s": r["t_end"] - r["t0"],
                "tokens_per_s": rows * (new_tokens - 1) / decode_s, "tokens": r["tokens"],
                "compiled": r.get("compiled")}

    def memory() -> dict:
        out = {"peak_rss_mb": peak_rss_mb()}
        if dev.type == "cuda":  # the GPU's own peak: what limits batch size and model size there
            out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        return out

    serve({"load": load, "prefill": prefill, "vision": vision, "generate": generate, "rss": memory})


if __name__ == "__main__":
    if sys.argv[1] == "reference":  # float_logits' child
        write_float_logits(*sys.argv[2:8])
    else:
        main(*sys.argv[1:7])
