"""Loading: peak memory and seconds, vlmkit `load_hf` vs transformers `from_pretrained`, one run.

A PaliGemma folder (random weights, written once into --workdir) is loaded into bfloat16 from a
float32 folder (a dtype change) and from a bfloat16 folder, each load in a fresh subprocess, the
two libraries interleaved (A, B, A, B) and the best of --reps kept. With --quantize (default
int8 and int4-g64), the bfloat16 folder is also loaded quantised by vlmkit, both ways: quantised
while loading (`load_hf_quantized`, what `vlmkit.load(..., quantize=)` does: "vlmkit+int8") and
loaded in float then quantised (`quantize_model`, the way before it: "vlmkit+int8+then"), each
against transformers' bfloat16 load of the same folder. Memory is the growth of the
process's peak RSS during the load (VmHWM reset through /proc/self/clear_refs just before it,
after imports and a warm-up load of a tiny folder, and with every weight read once after the
load, since a memory-mapped tensor costs nothing until touched), next to the loaded weight bytes:

    .venv/bin/python benchmarks/bench_load.py --shape 3b --json benchmarks/results/load-3b-cpu.json
    .venv/bin/python benchmarks/bench_load.py --shape mid                 # ~1 minute
    .venv/bin/python benchmarks/bench_load.py --shape mid-300m --json benchmarks/results/load-mid-300m-cpu.json

Ratios: peak / final weight bytes (target <= 1.15), and vlmkit / transformers for peak memory
(< 1 = vlmkit smaller) and transformers / vlmkit for time (> 1 = vlmkit faster). A quantised
model's final bytes count every buffer it holds (int4's kernel layout too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

_WRITE = r"""
import sys, torch
from dataclasses import replace
from vlmkit.models.common.init import init_weights
from vlmkit.models.paligemma.config import PRESETS
from vlmkit.models.paligemma.model import PaliGemma
from vlmkit.weights.hf import load_hf, save_hf
shape, f32, bf16 = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, sys.argv[4])  # benchmarks/, for bench_generate's shapes
cfg = PRESETS["paligemma-3b-224"]
if shape == "mid":  # the 3B layout, 4 decoder and 6 vision layers: ~1.06B parameters, the real vocabulary
    cfg = replace(cfg, text=replace(cfg.text, num_layers=4), vision=replace(cfg.vision, num_layers=6))
elif shape == "mid-300m":  # bench_generate.py's mid-300m: SigLIP-B/16 + a 12-layer 1024-wide Gemma, 32k vocabulary
    from _families import case_config
    cfg = case_config("paligemma", "mid-300m")
save_hf(init_weights(PaliGemma(cfg), seed=0), f32)
save_hf(load_hf(f32, dtype="bfloat16"), bf16)
"""

_LOAD = r"""
import json, sys, time, torch
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
lib, folder, warm = sys.argv[1], sys.argv[2], sys.argv[3]
if lib == "vlmkit":
    from vlmkit.weights.hf import load_hf
    load = lambda f: load_hf(f, dtype="bfloat16")
elif lib.startswith("vlmkit+"):  # vlmkit+SCHEME: quantised while loading; +then: float load, then quantise
    from vlmkit.generation.quant import load_hf_quantized, quantize_model
    from vlmkit.weights.hf import load_hf
    scheme = lib.split("+")[1]
    if lib.endswith("+then"):
        load = lambda f: quantize_model(load_hf(f, dtype="bfloat16"), scheme)
    else:
        load = lambda f: load_hf_quantized(f, scheme, dtype="bfloat16")
else:
    from transformers import PaliGemmaForConditionalGeneration
    load = lambda f: PaliGemmaForConditionalGeneration.from_pretrained(f, dtype=torch.bfloat16)
load(warm)  # imports, lazy registries, allocator pools: not part of the load measured
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM (the peak) := current RSS
t0 = time.perf_counter()
model = load(folder)
seconds = time.perf_counter() - t0
# Read every weight once: a memory-mapped tensor costs nothing until its pages are touched, and a
# model is loaded to be used. Tied tensors (one storage, two names) are counted once; every buffer
# counts (int4's kernel layout is not in the state dict but is held).
unique = {t.untyped_storage().data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
for t in unique.values():
    if t.numel():
        t.max()  # not sum(): an integer tensor's sum makes an int64 copy of it (8x an int8 weight)
final = sum(t.numel() * t.element_size() for t in unique.values())
print(json.dumps({"peak_growth": status("VmHWM:") - before, "peak_total": status("VmHWM:"),
                  "seconds": seconds, "final_bytes": final}))

"""


def _run(code: str, *args: str) -> str:
    # One fixed glibc mmap threshold for every worker: glibc's dynamic one moves when the warm-up
    # load frees its large blocks, which made peaks bimodal between identical runs (see
    # tests/unit/test_lean_loading.py); both libraries run under the same setting.
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def _folders(workdir: Path, shape: str) -> tuple[Path, Path, Path]:
    f32, bf16, warm = workdir / f"{shape}-f32", workdir / f"{shape}-bf16", workdir / "warm"
    if not (bf16 / "config.json").is_file():
        print(f"writing {f32} and {bf16} (random weights) ...", flush=True)
        _run(_WRITE, shape, str(f32), str(bf16), str(Path(__file__).resolve().parent))
    if not (warm / "config.json").is_file():
        from vlmkit.models.common.init import init_weights
        from vlmkit.models.paligemma.config import PRESETS
        from vlmkit.models.paligemma.model import PaliGemma
        from vlmkit.weights.hf import save_hf

        save_hf(init_weights(PaliGemma(replace(PRESETS["debug"])), seed=0), warm)
    return f32, bf16, warm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=("3b", "mid", "mid-300m"), default="mid",
                   help="paligemma-3b-224, its layout cut to ~1B (mid), or bench_generate's mid-300m")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/vlmkit-bench-load"), help="where the folders are written")
    p.add_argument("--reps", type=int, default=2, help="loads per library and folder (best kept)")
    p.add_argument("--quantize", default="int8,int4-g64",
                   help="comma-separated schemes vlmkit also loads the bf16 folder with ('' for none)")
    p.add_argument("--json", type=Path, help="write every sample here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    f32, bf16, warm = _folders(args.workdir, args.shape)
    schemes = [q for q in args.quantize.split(",") if q]
    quantised = [f"vlmkit+{q}{how}" for q in schemes for how in ("", "+then")]
    samples: dict[str, list[dict]] = {}
    for _ in range(args.reps):  # interleaved: every variant once per repetition
        for source in (f32, bf16):
            for lib in ("vlmkit", "transformers", *(quantised if source == bf16 else ())):
                key = f"{lib}:{source.name}"
                samples.setdefault(key, []).append(json.loads(_run(_LOAD, lib, str(source), str(warm))))
    best = {k: {"peak_growth": min(s["peak_growth"] for s in v), "seconds": min(s["seconds"] for s in v),
                "final_bytes": v[0]["final_bytes"]} for k, v in samples.items()}
    rows = _table(best, args.shape)
    quant_rows = _quant_table(best, args.shape, quantised)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": run_metadata(), "kind": "load", "shape": args.shape, "samples": samples,
                                         "best": best, "rows": rows, "quantized": quant_rows,
                                         "ratio_legend": "peak/final: peak RSS growth over the loaded weight bytes; "
                                         "mem vlmkit/tf < 1 = vlmkit smaller; speed tf/vlmkit > 1 = vlmkit faster; "
                                         "quantised rows: vlmkit+S = quantised while loading, +then = float load "
                                         "then quantise, against transformers' bf16 load of the bf16 folder"},
                                        indent=2))
    return 0


def _table(best: dict, shape: str) -> list[dict]:
    print(f"\nLoading paligemma {shape} into bfloat16 (peak = growth of peak RSS during the load)")
    print(f"{'folder':<10} {'library':<13} {'weights GiB':>11} {'peak GiB':>9} {'peak/final':>10} {'seconds':>8}")
    rows = []
    for src in ("f32", "bf16"):
        folder = f"{shape}-{src}"
        v, t = best[f"vlmkit:{folder}"], best[f"transformers:{folder}"]
        for lib, r in (("vlmkit", v), ("transformers", t)):
            print(f"{src:<10} {lib:<13} {r['final_bytes'] / 2**30:>11.2f} {r['peak_growth'] / 2**30:>9.2f} "
                  f"{r['peak_growth'] / r['final_bytes']:>10.2f} {r['seconds']:>8.2f}")
        row = {"folder": src, "vlmkit_peak_over_final": v["peak_growth"] / v["final_bytes"],
               "transformers_peak_over_final": t["peak_growth"] / t["final_bytes"],
               "mem_vlmkit_over_tf": v["peak_growth"] / t["peak_growth"], "speed_tf_over_vlmkit": t["seconds"] / v["seconds"]}
        rows.append(row)
        print(f"{'':<10} ratio: memory vlmkit/transformers {row['mem_vlmkit_over_tf']:.2f}, "
              f"speed-up {row['speed_tf_over_vlmkit']:.2f}x")
    return rows


def _quant_table(best: dict, shape: str, quantised: list[str]) -> list[dict]:
    """Rows for the quantised loads of the bf16 folder, against transformers' bf16 load of it."""
    if not quantised:
        return []
    t = best[f"transformers:{shape}-bf16"]
    print(f"\nQuantised from the bf16 folder (transformers bf16: peak {t['peak_growth'] / 2**30:.2f} GiB, "
          f"{t['seconds']:.2f} s)")
    print(f"{'variant':<24} {'weights GiB':>11} {'peak GiB':>9} {'peak/final':>10} {'peak/tf bf16':>12} {'seconds':>8}")
    rows = []
    for lib in quantised:
        r = best[f"{lib}:{shape}-bf16"]
        row = {"variant": lib, "final_gib": r["final_bytes"] / 2**30, "peak_gib": r["peak_growth"] / 2**30,
               "peak_over_final": r["peak_growth"] / r["final_bytes"],
               "peak_over_tf_bf16": r["peak_growth"] / t["peak_growth"], "seconds": r["seconds"]}
        rows.append(row)
        print(f"{lib:<24} {row['final_gib']:>11.2f} {row['peak_gib']:>9.2f} {row['peak_over_final']:>10.2f} "
              f"{row['peak_over_tf_bf16']:>12.2f} {row['seconds']:>8.2f}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
