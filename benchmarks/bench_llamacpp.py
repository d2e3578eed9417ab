"""Text decode at batch 1 on CPU: vlmkit vs llama.cpp (llama-cpp-python), same weights, one run.

    .venv/bin/python benchmarks/bench_llamacpp.py --json benchmarks/results/llamacpp-cpu.json

What it does, in --workdir (default /tmp/llamacpp; nothing large is written into the repository):
1. llama.cpp: `llama-cpp-python==0.3.36` from PyPI built from its sdist (which vendors llama.cpp)
   into its own virtual environment `<workdir>/venv` with `CMAKE_ARGS=-DGGML_NATIVE=ON` (the
   compiler targets this CPU: AVX-512, VNNI, AVX512-BF16 and AMX where present; the build's
   `llama_print_system_info()` is stored in the JSON), plus `gguf==0.19.0`. Skipped when that
   venv already imports llama_cpp; the build's seconds are kept in `<workdir>/build.json`.
2. One random-weight Gemma decoder (`--preset`, default `gemma-2b`: PaliGemma 1's language model,
   2.5B parameters with the 257216-token vocabulary) written by `vlmkit.weights.create` directly
   in bfloat16 (5 GB; the float32 folder would be 10 GB), with the tokenizer vlmkit writes for it
   (grown to the vocabulary with filler tokens in tokenizer.json).
3. llama.cpp's own `convert_hf_to_gguf.py` (from the sdist, with its vendored gguf-py, run by
   this interpreter: it needs torch and transformers) writes BF16 and Q8_0 GGUF files from a
   folder of links to those weights plus what the converter needs and vlmkit's folder lacks
   (`converter_input`): `architectures` in config.json, and a SentencePiece tokenizer.model (the
   grown tokenizer has none): the same trained tokenizer, whose ~1.7k pieces keep their ids, the
   converter filling the other ids up to the vocabulary size with [PADn] tokens.
4. For each pair (`--pairs`, default Q8_0 and Q8_0+noextra vs vlmkit int8 weight-only, BF16 vs
   vlmkit bf16) two
   worker processes (`_llamacpp_worker.py`) load their model, warm up (vlmkit compiles its decode
   step), and then generate in turn (llama.cpp, vlmkit, llama.cpp, ...) --reps times from the
   same random --prompt-tokens ids, --new-tokens greedy tokens, --threads threads each. Best
   decode tokens/s of the reps, peak RSS of each process, the ratio vlmkit / llama.cpp (> 1 =
   vlmkit faster). `--profile` adds torch.profiler's top ops of vlmkit's decode step.

Both int8 schemes store one scale per group of weights and 8-bit integers, but they differ: Q8_0
has a float16 scale per 32 weights (8.5 bits per weight); vlmkit's int8 has one scale per output
channel (8 bits). llama.cpp also quantises the activations to Q8_0 and runs int8 x int8 dot
products (VNNI / AMX); vlmkit's `_weight_int8pack_mm` converts the int8 weights to bf16 / fp32
inside the kernel and multiplies with bf16 activations.

FINDINGS (benchmarks/results/llamacpp-cpu.json: 2-core shared Xeon with AMX, 2 threads, load
average 2.5 at start, 10.0 at end; 32 prompt + 64 greedy tokens, best of 3; gemma-2b):
- 8-bit: llama.cpp Q8_0 10.4 tok/s, vlmkit int8 + compile 6.01: **0.58x**, target 0.8x missed.
  With llama.cpp's extra buffer types off (`q8_0+noextra`: no AMX; AVX-512 VNNI dot products)
  llama.cpp does 6.13 tok/s: vlmkit 0.98x. 16-bit: llama.cpp BF16 3.26, vlmkit bf16 + compile
  4.05: 1.24x. Greedy tokens 64/64 equal in all three pairs.
- Profile of vlmkit's int8 step (8 steps, torch.profiler): `aten::_weight_int8pack_mm` is 95 %
  of it (159 of ~168 ms per token, 127 calls: 126 Linears + the tied LM head); attention,
  argmax and the compiled pointwise graph are < 5 %. ~2.5 GB of int8 weights in 159 ms is
  ~16 GB/s, below the ~20 GB/s the bf16 matmuls reach (5.0 GB per token at 4.05 tok/s) and the
  ~28 GB/s llama.cpp's AMX path reaches (2.67 GB at 10.4 tok/s): the kernel is compute-bound,
  not bandwidth-bound, on 2 cores.
- What stands in the way: torch's `_weight_int8pack_mm` converts every int8 weight to float
  and multiplies it with the bf16 activation in float FMAs (as we read its CPU kernel: one
  multiply-add per weight per 32-bit lane). llama.cpp quantises the activation row to Q8_0 once per matmul and runs int8 x int8
  dot products, 4 multiply-adds per 32-bit lane with VNNI (`vpdpbusd`) and tile products with
  AMX-INT8 (`tdpbssd`), which moves it to the memory-bandwidth floor. Reaching 0.8x needs the
  same scheme on the vlmkit side: a dynamic int8 activation quantisation + int8 GEMV kernel
  (e.g. oneDNN / torch's `_int_mm`-style int8 x int8 -> int32 with per-row and per-channel
  scales, or a CPU kernel of torchao's int8 dynamic-activation scheme), not in torch's
  weight-only op. Not tried in this session.
- Later run with that kernel (benchmarks/results/llamacpp-int8packed-cpu.json, `--pairs
  q8_0:int8-dyn+packed,q8_0:int8 --profile 8`, load 1.2-1.9; the machine was slower for both
  sides than above): Q8_0 7.57 tok/s vs vlmkit int8-dyn+packed (per-row int8 activations,
  oneDNN's prepacked `qlinear_pointwise`, eager) 5.05 = 0.67x; Q8_0 8.00 vs int8 + compile 4.79
  = 0.60x. `onednn::qlinear_pointwise` is 85 % of the step (163 ms, ~15 GB/s of int8 weights)
  against llama.cpp's ~20 GB/s: still short of 0.8x, by oneDNN's int8 GEMV speed here.
- AMX crash: in this build llama.cpp's `ggml_backend_amx_mul_mat` segfaults (gdb) on Q8_0
  batches of more than one token, so with extra buffers on the Q8_0 prompt is fed token by token
  (its prefill column is 32 one-token steps, not a batched prefill; decode is unaffected).
- BF16 pair: repetitions 2 and 3 ran at ~0.25 tok/s on both sides (the machine's load rose to
  ~10); the best-of is repetition 1 for both, measured back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Worker, format_table, ratio, run_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(Path(__file__).resolve().parent / "_llamacpp_worker.py")
LLAMA_CPP_VERSION, GGUF_VERSION = "0.3.36", "0.19.0"
CMAKE_ARGS = "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF " \
             "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
# --pairs entries: GGUF type : vlmkit variant (dtype + weight quantisation).
VLMKIT_VARIANTS = {"int8": ("bfloat16", "int8"), "int8-dyn": ("bfloat16", "int8-dyn"),
                   "int8-dyn+packed": ("bfloat16", "int8-dyn+packed"),  # eager (packed layers need max-autotune)
                   "bf16": ("bfloat16", "none"), "fp32": ("float32", "none")}
GGUF_TYPES = ("q8_0", "bf16", "f16")
# GGUF types llama.cpp puts in its AMX buffer (extra buffer types on): its one-token batches are
# fine, longer ones crash in this build (see _llamacpp_worker.LlamaCppRunner), so their prompt
# goes in one token at a time. "+noextra" after a type: llama.cpp without extra buffer types
# (no AMX, no repacked weights; plain AVX-512 VNNI dot products), the prompt in one batch.
AMX_TYPES = ("q8_0",)

_WRITE = r"""
import sys, torch
from vlmkit.weights.create import create_checkpoint
torch.set_default_dtype(torch.bfloat16)  # parameters created in bf16: no float32 copy of the model
create_checkpoint(sys.argv[1], preset=sys.argv[2], family="gemma")
"""

# The tokenizer create_checkpoint trained (same texts, same size: deterministic), as a folder with
# its SentencePiece tokenizer.model, which `pad_vocabulary` removes from a grown tokenizer.
_TOKENIZER = r"""
import sys
from pathlib import Path
from vlmkit.data.tokenizer_train import train_paligemma_tokenizer
train_paligemma_tokenizer(Path(sys.argv[1]))
"""


def venv_python(workdir: Path) -> Path:
    return workdir / "venv" / "bin" / "python"


def llama_cpp_importable(python: Path) -> bool:
    return python.exists() and subprocess.run([str(python), "-c", "import llama_cpp"], capture_output=True).returncode == 0


def llama_src(workdir: Path) -> Path:
    """The unpacked sdist (llama.cpp is under vendor/llama.cpp), downloaded and unpacked if absent."""
    src = workdir / f"llama_cpp_python-{LLAMA_CPP_VERSION}"
    if not src.is_dir():
        pip = [str(venv_python(workdir)), "-m", "pip"]
        subprocess.run([*pip, "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={LLAMA_CPP_VERSION}",
                        "-d", str(workdir / "sdist")], check=True)
        subprocess.run(["tar", "xzf", str(workdir / "sdist" / f"{src.name}.tar.gz"), "-C", str(workdir)], check=True)
    return src


def ensure_llamacpp(workdir: Path) -> dict:
    """Build llama-cpp-python into <workdir>/venv unless it imports already; the build record."""
    record = workdir / "build.json"
    python = venv_python(workdir)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(workdir / "venv")], check=True)
    src = llama_src(workdir)
    if not llama_cpp_importable(python):
        print(f"building llama-cpp-python {LLAMA_CPP_VERSION} (CMAKE_ARGS={CMAKE_ARGS}); on 2 cores ~30 min", flush=True)
        env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        t0 = time.time()
        subprocess.run([str(python), "-m", "pip", "install", "--no-cache-dir", str(src), f"gguf=={GGUF_VERSION}"],
                       env=env, check=True)
        record.write_text(json.dumps({"build_s": time.time() - t0, "cmake_args": CMAKE_ARGS,
                                      "llama_cpp_python": LLAMA_CPP_VERSION, "gguf": GGUF_VERSION}))
    return json.loads(record.read_text()) if record.exists() else {"build_s": None, "cmake_args": CMAKE_ARGS}


def ensure_checkpoint(workdir: Path, preset: str) -> Path:
    """The random-weight bf16 Gemma folder, written once (in a subprocess: its memory is freed)."""
    folder = workdir / f"hf-{preset}-bf16"
    if not (folder / "config.json").exists():
        print(f"writing {folder} (random gemma {preset}, bfloat16)", flush=True)
        subprocess.run([sys.executable, "-c", _WRITE, str(folder), preset], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return folder


def converter_input(workdir: Path, folder: Path) -> Path:
    """What convert_hf_to_gguf.py reads: `folder`'s weights (linked), its config.json with
    `architectures: ["GemmaForCausalLM"]` (the converter picks its model class by it; vlmkit's
    config.json has model_type only), and vlmkit's SentencePiece tokenizer (tokenizer.model and
    tokenizer_config.json; the converter pads the rest of the vocabulary with [PADn] tokens)."""
    view = workdir / f"{folder.name}-gguf-input"
    if (view / "config.json").exists():
        return view
    tok = workdir / "tokenizer-spm"
    subprocess.run([sys.executable, "-c", _TOKENIZER, str(tok)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    view.mkdir(exist_ok=True)
    for f in folder.glob("model*.safetensors*"):
        (view / f.name).unlink(missing_ok=True)
        (view / f.name).symlink_to(f.resolve())
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (view / name).write_bytes((tok / name).read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    (view / "config.json").write_text(json.dumps({**cfg, "architectures": ["GemmaForCausalLM"]}, indent=2))
    return view


def ensure_gguf(workdir: Path, folder: Path, outtype: str) -> Path:
    """`folder` converted by llama.cpp's convert_hf_to_gguf.py to `outtype` (written once)."""
    out = workdir / f"{folder.name}-{outtype}.gguf"
    if not out.exists():
        convert = llama_src(workdir) / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"
        tmp = out.with_suffix(".part")
        print(f"converting to {out.name}", flush=True)
        subprocess.run([sys.executable, str(convert), str(converter_input(workdir, folder)), "--outtype", outtype,
                        "--outfile", str(tmp)], check=True)
        tmp.rename(out)
    return out


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    """<bos> then n - 1 random ids past the special / filler tokens (the same for both sides)."""
    rng = random.Random(seed)
    return [2] + [rng.randrange(256, min(vocab, 200_000)) for _ in range(n - 1)]


def start_workers(args, folder: Path, gguf: Path | None, gguf_type: str, variant: str, python: Path) -> dict[str, Worker]:
    """The pair's workers, loaded: {"llama.cpp": ..., "vlmkit": ...} (llama.cpp left out without gguf)."""
    dtype, quant = VLMKIT_VARIANTS[variant]
    compiled = "compile" if args.compile else "eager"
    workers = {}
    if gguf is not None:
        extra = "noextra" if gguf_type.endswith("+noextra") else "extra"
        prompt = "tokens" if extra == "extra" and gguf_type in AMX_TYPES else "batch"
        workers["llama.cpp"] = Worker([WORKER, "llamacpp", str(gguf), str(args.threads), extra, prompt], "llama.cpp",
                                      python=str(python))
    env_argv = [WORKER, "vlmkit", str(folder), dtype, quant, compiled, str(args.threads)]
    workers["vlmkit"] = Worker(env_argv, "vlmkit")
    return workers


def run_pair(args, folder: Path, gguf: Path | None, gguf_type: str, variant: str, python: Path,
             prompt: list[int]) -> dict:
    """Load both sides, warm up, then --reps interleaved generations; every sample is kept."""
    workers = start_workers(args, folder, gguf, gguf_type, variant, python)
    out: dict = {name: {"samples": []} for name in workers}
    try:
        for name, w in workers.items():
            out[name]["load"] = w.ask("load")
            out[name]["warmup"] = w.ask("generate", prompt=prompt, new_tokens=args.new_tokens)  # compiles
        for _ in range(args.reps):
            for name, w in workers.items():
                out[name]["samples"].append(w.ask("generate", prompt=prompt, new_tokens=args.new_tokens))
        for name, w in workers.items():
            out[name]["peak_rss_mb"] = w.ask("rss")["peak_rss_mb"]
        if args.profile:
            out["vlmkit"]["profile"] = workers["vlmkit"].ask("profile", prompt=prompt, new_tokens=args.new_tokens,
                                                           steps=min(args.profile, args.new_tokens - 1), top=15)
    finally:
        for w in workers.values():
            w.close()
    for side in out.values():
        best = max(side["samples"], key=lambda s: s["tokens_per_s"])
        side.update(decode_tok_s=best["tokens_per_s"], prefill_s=min(s["prefill_s"] for s in side["samples"]),
                    tokens=best["tokens"])
    return out


def summary_row(pair: str, res: dict) -> dict:
    v, ll = res["vlmkit"], res.get("llama.cpp")
    row = {"variant": pair, "vlmkit tok/s": v["decode_tok_s"], "vlmkit prefill ms": v["prefill_s"] * 1e3,
           "vlmkit RSS MB": v["peak_rss_mb"], "compiled": v["samples"][0].get("compiled")}
    if ll is not None:
        same = sum(a == b for a, b in zip(v["tokens"], ll["tokens"]))
        row.update({"llama.cpp tok/s": ll["decode_tok_s"], "x llama.cpp": ratio(v["decode_tok_s"], ll["decode_tok_s"]),
                    "llama.cpp prefill ms": ll["prefill_s"] * 1e3, "llama.cpp RSS MB": ll["peak_rss_mb"],
                    "same tokens": f"{same}/{len(v['tokens'])}"})
    return row


COLUMNS = ("variant", "llama.cpp tok/s", "vlmkit tok/s", "x llama.cpp", "llama.cpp prefill ms", "vlmkit prefill ms",
           "llama.cpp RSS MB", "vlmkit RSS MB", "same tokens", "compiled")
LEGEND = ("x llama.cpp = vlmkit decode tok/s / llama.cpp decode tok/s (> 1 = vlmkit faster); decode tok/s is the "
          "best of the reps at batch 1; same tokens = greedy tokens equal position by position (the two int8 schemes "
          "and bf16 rounding differ, so random-weight near-ties may flip)")


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """"q8_0:int8,bf16:bf16" -> [("q8_0", "int8"), ("bf16", "bf16")]; bad entries -> argparse error."""
    pairs = []
    for item in text.split(","):
        gguf, _, variant = item.partition(":")
        if gguf.removesuffix("+noextra") not in GGUF_TYPES or variant not in VLMKIT_VARIANTS:
            raise argparse.ArgumentTypeError(f"bad pair {item!r}: GGUF type in {GGUF_TYPES} (+noextra) : vlmkit variant in "
                                             f"{tuple(VLMKIT_VARIANTS)}")
        pairs.append((gguf, variant))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/llamacpp"), help="venv, sdist, HF folder, GGUF files")
    p.add_argument("--preset", default="gemma-2b", help="vlmkit gemma preset (debug for a smoke run)")
    p.add_argument("--pairs", type=parse_pairs, default=parse_pairs("q8_0:int8,q8_0+noextra:int8,bf16:bf16"))
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="vlmkit decodes eagerly")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS", help="profile STEPS vlmkit decode steps")
    p.add_argument("--skip-llamacpp", action="store_true", help="vlmkit side only (no build, no GGUF)")
    p.add_argument("--json", type=Path)
    return p


def print_profile(pair: str, prof: dict) -> None:
    print(f"\nvlmkit decode step profile ({pair}, {prof['steps']} steps, self CPU time):")
    rows = [{"op": o["op"][:60], "calls/step": o["calls"] / prof["steps"], "ms/step": o["self_ms_per_step"],
             "share": f"{o['self_share']:.1%}"} for o in prof["ops"]]
    print(format_table(rows, ("op", "calls/step", "ms/step", "share")))


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(argv)
    build = None if args.skip_llamacpp else ensure_llamacpp(args.workdir)
    folder = ensure_checkpoint(args.workdir, args.preset)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    prompt = prompt_ids(args.prompt_tokens, vocab)
    results, rows = {}, []
    for gguf_type, variant in args.pairs:
        pair = f"{gguf_type.upper()} vs vlmkit {variant}"
        gguf = None if args.skip_llamacpp else ensure_gguf(args.workdir, folder, gguf_type.removesuffix("+noextra"))
        print(f"running {pair}", flush=True)
        results[pair] = run_pair(args, folder, gguf, gguf_type, variant, venv_python(args.workdir), prompt)
        rows.append(summary_row(pair, results[pair]))
    meta["loadavg_end"] = list(os.getloadavg())
    if args.skip_llamacpp:
        print("llama.cpp side skipped (--skip-llamacpp)")
    print(format_table(rows, COLUMNS))
    print(LEGEND)
    for pair, res in results.items():
        if "profile" in res["vlmkit"]:
            print_profile(pair, res["vlmkit"]["profile"])
    out = {"meta": meta, "build": build, "preset": args.preset, "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "threads": args.threads, "reps": args.reps, "compile": args.compile,
           "ratio_legend": LEGEND, "rows": rows, "pairs": results}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
