"""Generation of any registered `vlm` family on CPU or a CUDA GPU: vlmkit vs transformers, side by side.

    python benchmarks/bench_generate.py                       # PaliGemma: debug + mid-300m (fp32, bf16)
    python benchmarks/bench_generate.py --full                # + the family's real shape (paligemma-3b-224), bf16
    python benchmarks/bench_generate.py --family llava        # LLaVA: debug + clip-b16-llama-300m
    python benchmarks/bench_generate.py --family idefics3 --preset SmolVLM-256M-Instruct --dtype bfloat16
    python benchmarks/bench_generate.py --cases mid-300m:bfloat16 --variants vlmkit+compile,transformers
    python benchmarks/bench_generate.py --cases debug:float32 --int8 --json out.json   # + int8 on both sides
    python benchmarks/bench_generate.py --device cuda --cases debug:bfloat16,mid-300m:bfloat16 --full
    python benchmarks/bench_generate.py --family all --cases debug:float32,llava/pixtral-debug:float32
    bash benchmarks/gpu_all_families.sh       # every family, debug + one mid/real shape, on a CUDA GPU

For each case (a shape of `--family`: the benchmark's own, see `_families.SHAPES`, or any preset
of the family's registry record), one random-weight model is written as a HF safetensors folder
(cached under --workdir) and loaded by each framework's own loader in its own subprocess
(`vlmkit.weights.hf.load_hf`; transformers' `AutoModelForImageTextToText`, which picks the class
from config.json's model_type). Both are fed the same saved batch (`_families.build_batch`).
Measured per variant: prefill (image encoding + prompt forward to the first logits, batch 1),
time to first token and decode tokens/s of greedy `generate` at batch 1 and batch 8, the vision
tower alone on 8 images, and peak RSS of the process (on CUDA also the GPU's peak allocated
memory). `--device` (default: cuda when available, else cpu) is where both frameworks run and
the floors are measured.

Baselines are transformers' own paths: default `generate`, `+static` (static cache), `+static+compile`
(its documented fast path: static cache + torch.compile of the forward) and, with torchao,
`+int8+static+compile`. Each vlmkit variant's table row is compared with the one that makes the
same int8 / compile choices (`reference_for`); ratios are speed-ups (> 1 = faster) and memory
ratios (< 1 = smaller), as the legend printed above each table says. `--json` also records where
and when it ran (`meta`: command, CPU and flags, versions, load average).

Floors: decode must read every language-model weight (and the KV cache) once per step, so a step
takes at least bytes / memory bandwidth; prefill must do its matmul FLOPs, so it takes at least
FLOPs / dense matmul rate; the vision tower likewise on its own FLOPs. Both rates are measured
on the device at the start of the run. `frac` = floor / measured time (1.0 = at the hardware
limit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import Worker, format_table, hardware, ratio, run_metadata, torchao_missing  # noqa: E402
from _families import DEFAULT_CASES, FULL_CASES, build_batch, case_config, vlm_family  # noqa: E402
from _family_batches import Images, tower  # noqa: E402
from render_table import same_tokens  # noqa: E402

from vlmkit.models.common.init import init_weights  # noqa: E402
from vlmkit.models.registry import families  # noqa: E402
from vlmkit.weights.hf import save_hf  # noqa: E402

WORKER = str(Path(__file__).with_name("_gen_worker.py"))


def ensure_checkpoint(family: str, name: str, dtype: str, workdir: Path) -> Path:
    """Write (once) a seeded random-weight checkpoint of `family` case `name` in `dtype`."""
    folder = workdir / f"{family}-{name}-{dtype}"
    if (folder / "config.json").is_file():
        return folder
    torch.set_default_dtype(getattr(torch, dtype))  # build in place: no fp32 copy of a 3B model
    try:
        model = init_weights(vlm_family(family).model_class(case_config(family, name)), std=0.02, seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    print(f"writing {folder} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params)", flush=True)
    return save_hf(model, folder)


def _matrix_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.dim() >= 2)


def floors(family: str, cfg, dtype: str, hw: dict, batch: int, text_len: int, new_tokens: int,
           images: Images) -> dict:
    """Lower bounds (seconds) for batch-1 prefill and per-step decode at `batch` rows.

    From the config, a meta-device model (its vision tower, width and depth: `_family_batches.tower`;
    its adapter's decoder; the rest of the model is the projector) and the batch's `images` (image
    tokens per prompt, tower positions per image).
    """
    spec = vlm_family(family)
    with torch.device("meta"):
        m = spec.model_class(cfg)
    lm = spec.generation.decoder(m)
    vision_tower, width, depth = tower(family, m)
    elt = torch.finfo(getattr(torch, dtype)).bits // 8
    c = cfg.text
    lm_params = sum(p.numel() for p in lm.parameters())
    n, P = len(images.tokens), images.positions
    T = n + text_len
    # Decode: all LM weights once per step (tied head included), plus the KV cache read at the
    # mean length of the run.
    kv = 2 * c.num_layers * batch * c.num_kv_heads * (T + new_tokens / 2) * c.head_dim * elt
    decode_s = (lm_params * elt + kv) / (hw["bandwidth_GBps"] * 1e9)
    # Prefill FLOPs: 2 per weight per token for every matmul, attention's QK^T and PV, the head
    # for the last position only; the vision tower on its P positions (full attention: a lower
    # bound's upper end for windowed towers), the projector (and any second tower: DeepSeek-VL's
    # SAM) on its n output tokens (whatever it merges: pixel shuffle makes n < P).
    vis_mat = _matrix_params(vision_tower)
    proj_mat = _matrix_params(m) - vis_mat - _matrix_params(lm)
    lm_mat = _matrix_params(lm.layers)
    # The vision tower + projector's share on its own: the vision target is measured against it.
    vis_flops = 2 * P * vis_mat + 4 * P * P * width * depth + 2 * n * proj_mat
    flops = (vis_flops + 2 * T * lm_mat + 4 * T * T * c.num_heads * c.head_dim * c.num_layers
             + 2 * c.hidden_size * c.vocab_size)
    rate = hw["matmul_GFLOPs"][dtype] * 1e9
    return {"prefill_s": flops / rate, "decode_step_s": decode_s, "prefill_GFLOP": flops / 1e9,
            "decode_bytes_per_step_MB": (lm_params * elt + kv) / 1e6,
            "vision_s_per_image": vis_flops / rate, "vision_GFLOP_per_image": vis_flops / 1e9}


def run_case(family: str, name: str, dtype: str, variants: list[str], args, hw: dict) -> dict:
    cfg = case_config(family, name)
    folder = ensure_checkpoint(family, name, dtype, args.workdir)
    inputs = args.workdir / f"inputs-{family}-{name}-{dtype}.pt"
    batches = {f"b{b}": build_batch(family, cfg, b, args.text_len, dtype, seed=b) for b in (1, 8)}
    torch.save({k: batch for k, (batch, _) in batches.items()}, inputs)
    argv = [str(folder), dtype, str(inputs), str(args.threads), args.device]
    workers = [Worker([WORKER, v, *argv], v) for v in variants]
    try:
        samples = {w.name: {"load": w.ask("load")} for w in workers}
        for w in workers:  # warm-up (and compilation) outside the timed repetitions
            w.ask("prefill", batch="b1")
            for b in ("b1", "b8"):
                samples[w.name][f"warmup_{b}_s"] = w.ask("generate", batch=b, new_tokens=args.new_tokens)["total_s"]
        for _ in range(args.reps):
            for w in workers:  # interleaved: A, B, A, B ...
                samples[w.name].setdefault("prefill", []).append(w.ask("prefill", batch="b1")["s"])
            for w in workers:
                vis = w.ask("vision", batch="b8", reps=1)
                samples[w.name].setdefault("vision_per_image", []).append(vis["s"] / vis["images"])
            for b in ("b1", "b8"):
                for w in workers:
                    samples[w.name].setdefault(b, []).append(w.ask("generate", batch=b, new_tokens=args.new_tokens))
        for w in workers:
            samples[w.name]["memory"] = w.ask("rss")
    finally:
        for w in workers:
            w.close()
    fl = {b: floors(family, cfg, dtype, hw, int(b[1:]), args.text_len, args.new_tokens, batches[b][1])
          for b in ("b1", "b8")}
    return {"family": family, **summarise(name, dtype, samples, fl)}


RATIO_LEGEND = ("ratios (x columns) are against the variant named in `vs`: pf x, ttft x, b1 x, b8 x, vis x = "
                "its time / this row's time, i.e. a speed-up (> 1 = this row faster); rss x, gpu x = this row's "
                "memory / its memory (< 1 = this row smaller)")


def is_reference(variant: str) -> bool:
    return variant.split("+")[0] == "transformers"


def reference_for(variant: str, references: list[str]) -> str | None:
    """The baseline a variant's table row is compared with: the transformers variant with the same
    int8 and compile choices (vlmkit+compile -> transformers+static+compile, vlmkit+int8+compile ->
    transformers+int8+static+compile), else default transformers; transformers variants are
    compared with default transformers."""
    flags = {"int8", "compile"} & set(variant.split("+"))
    if not is_reference(variant):
        same = [r for r in references if {"int8", "compile"} & set(r.split("+")) == flags]
        if same:
            return same[0]
    return "transformers" if "transformers" in references else None


def compare(m: dict, ref: dict) -> dict:
    """Ratios of one variant's metrics `m` to a reference's: speed-ups (reference time / this time,
    > 1 = faster) and memory ratios (this / reference, < 1 = smaller); greedy tokens identical?"""
    return {
        "prefill_speedup": ratio(ref["prefill_s"], m["prefill_s"]), "ttft_speedup": ratio(ref["ttft_s"], m["ttft_s"]),
        "decode_b1_speedup": ratio(m["decode_tok_s_b1"], ref["decode_tok_s_b1"]),
        "decode_b8_speedup": ratio(m["decode_tok_s_b8"], ref["decode_tok_s_b8"]),
        "vision_speedup": ratio(ref["vision_s_per_image"], m["vision_s_per_image"]),
        "peak_rss_ratio": ratio(m["peak_rss_mb"], ref["peak_rss_mb"]),
        "cuda_peak_ratio": ratio(m["cuda_peak_mb"], ref["cuda_peak_mb"]),
        "same_tokens_b1": m["tokens"]["b1"] == ref["tokens"]["b1"],
        "same_tokens_b8": m["tokens"]["b8"] == ref["tokens"]["b8"],
    }


def summarise(name: str, dtype: str, samples: dict, fl: dict) -> dict:
    """Best-of-reps metrics per variant, ratios to transformers, floors and fractions."""
    out = {"case": name, "dtype": dtype, "floors": fl, "variants": {}}
    for v, s in samples.items():
        best = {b: max(s[b], key=lambda r: r["tokens_per_s"]) for b in ("b1", "b8")}
        out["variants"][v] = {
            "prefill_s": min(s["prefill"]), "ttft_s": min(r["ttft_s"] for r in s["b1"]),
            "decode_tok_s_b1": best["b1"]["tokens_per_s"], "decode_tok_s_b8": best["b8"]["tokens_per_s"],
            "vision_s_per_image": min(s["vision_per_image"]),
            "peak_rss_mb": s["memory"]["peak_rss_mb"], "cuda_peak_mb": s["memory"].get("cuda_peak_mb"),
            "load_s": s["load"]["load_s"],
            "compiled": best["b8"].get("compiled"),  # None: eager variant; False: compile fell back
            "logit_error": s["load"]["logit_error"],
            "first_run_s": {b: s[f"warmup_{b}_s"] for b in ("b1", "b8")},
            "tokens": {b: best[b]["tokens"] for b in ("b1", "b8")},
            "samples": {"prefill_s": s["prefill"], "vision_s_per_image": s["vision_per_image"],
                        **{f"tok_s_{b}": [r["tokens_per_s"] for r in s[b]] for b in ("b1", "b8")}},
        }
    for v, m in out["variants"].items():
        m["vs"] = {r: compare(m, out["variants"][r]) for r in out["variants"] if is_reference(r) and r != v}
        m["reference"] = reference_for(v, list(m["vs"]))
        m["vs_transformers"] = m["vs"].get("transformers")
        m["fraction_of_floor"] = {
            "prefill": fl["b1"]["prefill_s"] / m["prefill_s"],
            "decode_b1": m["decode_tok_s_b1"] * fl["b1"]["decode_step_s"],
            "decode_b8": m["decode_tok_s_b8"] * fl["b8"]["decode_step_s"] / 8,
            "vision": fl["b1"]["vision_s_per_image"] / m["vision_s_per_image"],
        }
    return out


def table_rows(result: dict) -> list[dict]:
    fl, rows = result["floors"], []
    for v, m in result["variants"].items():
        vs, frac = m["vs"].get(m["reference"]) or {}, m["fraction_of_floor"]
        rows.append({
            "case": f"{result['family']} {result['case']} {result['dtype']}",
            "variant": v + (" (fell back to eager)" if m["compiled"] is False else ""), "vs": m["reference"],
            "prefill ms": m["prefill_s"] * 1e3, "pf x": vs.get("prefill_speedup"),
            "ttft ms": m["ttft_s"] * 1e3, "ttft x": vs.get("ttft_speedup"),
            "tok/s b1": m["decode_tok_s_b1"], "b1 x": vs.get("decode_b1_speedup"),
            "tok/s b8": m["decode_tok_s_b8"], "b8 x": vs.get("decode_b8_speedup"),
            "vis ms/img": m["vision_s_per_image"] * 1e3, "vis x": vs.get("vision_speedup"),
            "RSS MB": m["peak_rss_mb"], "rss x": vs.get("peak_rss_ratio"),
            **({"GPU MB": m["cuda_peak_mb"], "gpu x": vs.get("cuda_peak_ratio")} if m["cuda_peak_mb"] else {}),
            "same tok": None if not vs else same_tokens(vs),
            "frac pf/b1/b8/vis": "/".join(f"{frac[k]:.2f}" for k in ("prefill", "decode_b1", "decode_b8", "vision")),
        })
    rows.append({"case": "", "variant": "floor", "prefill ms": fl["b1"]["prefill_s"] * 1e3,
                 "tok/s b1": 1 / fl["b1"]["decode_step_s"], "tok/s b8": 8 / fl["b8"]["decode_step_s"],
                 "vis ms/img": fl["b1"]["vision_s_per_image"] * 1e3})
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="paligemma", help="registered vlm families, comma-separated (paligemma, llava, "
                   "idefics3, ...), or all")
    p.add_argument("--cases", help="comma-separated [FAMILY/]CASE:DTYPE, a case being one of the benchmark's shapes or "
                   "a preset of the family (with FAMILY/: of that family only); default: "
                   + "; ".join(f"{f}: {c}" for f, c in DEFAULT_CASES.items()))
    p.add_argument("--preset", help="one case: this shape or preset of the family, in --dtype (instead of --cases)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="with --preset")
    p.add_argument("--full", action="store_true", help="add the family's real large shape: "
                   + ", ".join(f"{f} {c}" for f, c in FULL_CASES.items()) + " (GBs per framework, slow)")
    p.add_argument("--variants", default="vlmkit,vlmkit+compile,transformers,transformers+static+compile",
                   help="comma-separated; vlmkit with +int8 / +int8-dyn / +int4-gG / +compile (+max: mode max-autotune) / +graphs / +packed suffixes, transformers with "
                        "+int8 (torchao) / +static / +compile")
    p.add_argument("--int8", action="store_true",
                   help="add vlmkit+int8+compile and transformers+int8+static+compile (torchao int8 weight-only, "
                        "when torchao is installed); both report their logit error")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--text-len", type=int, default=16, help="prompt text tokens after the image tokens")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in each worker (0 = torch's default); 1 is steadier on a busy machine")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where both frameworks run (auto: cuda when available)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit-bench")
    p.add_argument("--json", type=Path, help="write all results and samples here")
    return p.parse_args(argv)


def chosen_families(arg: str) -> list[str]:
    """--family: comma-separated names, or `all` (every registered vlm family); each checked."""
    names = [f.name for f in families() if f.kind == "vlm"] if arg == "all" else arg.split(",")
    for name in names:
        vlm_family(name)
    return names


def chosen_cases(args) -> list[tuple[str, str, str]]:
    """(family, case, dtype) triples from --preset / --cases / each family's default (+ --full),
    each checked: an unknown family or case stops here with one line, before anything is written.
    A `FAMILY/CASE:DTYPE` item is a case of that family alone; a plain one is run for every --family."""
    cases = []
    for family in chosen_families(args.family):
        default = DEFAULT_CASES.get(family, "debug:float32")
        spec = f"{args.preset}:{args.dtype}" if args.preset else args.cases or default
        if args.full and family in FULL_CASES:
            spec += "," + FULL_CASES[family]
        for item in spec.split(","):
            own, _, rest = item.rpartition("/")
            name, _, dtype = rest.partition(":")
            if dtype not in ("float32", "bfloat16", "float16"):
                raise SystemExit(f"--cases: {item!r} is not CASE:DTYPE (or FAMILY/CASE:DTYPE) with DTYPE "
                                 "float32, bfloat16 or float16")
            if own and own != family:
                continue  # another family's case
            case_config(family, name)
            cases.append((family, name, dtype))
    extra = {i.rpartition("/")[0] for i in (args.cases or "").split(",")} - {"", *chosen_families(args.family)}
    if extra:
        raise SystemExit(f"--cases: {', '.join(sorted(extra))} not among --family {args.family}")
    return cases


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    cases = chosen_cases(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    meta = run_metadata(argv)  # load average first: before this run adds its own
    variants = args.variants.split(",") + (["vlmkit+int8+compile", "transformers+int8+static+compile"]
                                           if args.int8 else [])
    missing = torchao_missing() if any(is_reference(v) and "int8" in v.split("+") for v in variants) else None
    if missing:
        print(f"torchao int8 variants skipped: {missing}", flush=True)
        variants = [v for v in variants if not (is_reference(v) and "int8" in v.split("+"))]
    if args.threads > 0:
        torch.set_num_threads(args.threads)  # floors measured with the workers' thread count
    hw = hardware(args.device)
    print(json.dumps(meta), flush=True)
    print(json.dumps(hw), flush=True)
    results = []
    for family, name, dtype in cases:
        results.append(run_case(family, name, dtype, variants, args, hw))
        print(RATIO_LEGEND)
        print(format_table(table_rows(results[-1]), list(table_rows(results[-1])[0])), flush=True)
        for v, m in results[-1]["variants"].items():
            if m["logit_error"]:
                print(f"  {v} logit error vs {dtype}: {m['logit_error']}")
    rows = [r for res in results for r in table_rows(res)]
    print(f"\nAll cases; {RATIO_LEGEND}; frac = floor / measured time (1.0 = at the hardware limit):")
    print(format_table(rows, list(rows[0])))
    if args.json:
        meta["loadavg_end"] = list(os.getloadavg())
        args.json.write_text(json.dumps({"meta": meta, "hardware": hw, "ratio_legend": RATIO_LEGEND,
                                         "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
