"""Float vs int8 vs int8-dyn vs int4 decode, eager and compiled, at batch 1 and 8, in one run; and the logit
error report of every scheme on the bundled model.

    python benchmarks/bench_quant.py                                  # debug + mid-300m, bf16
    python benchmarks/bench_quant.py --cases debug:bfloat16 --schemes int8,int4-g32 --no-compile
    python benchmarks/bench_quant.py --error-report                   # only the error report

Decode: each variant is a `_gen_worker.py` subprocess (the same worker, timing and interleaving as
bench_generate.py) loading the same random-weight checkpoint; the quantised variants quantise the
decoder in place (`vlmkit.generation.quant.quantize_model`), compiled ones decode with
`compile_decode()`. Ratios are decode
tokens/s of each quantised variant over the float variant with the same compile choice
(> 1 = faster than float).

Error report (`--error-report`, also run by default): `vlmkit.generation.quant_report` on the
bundled vlmkit-shapes-tiny in float32: max |logit error| / max |float logit| and argmax agreement
over 512 target positions of held-out scenes, and the change in held-out loss; written to
benchmarks/results/quant-error-cpu.json (decode results to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import format_table, hardware, run_metadata  # noqa: E402
from bench_generate import run_case  # noqa: E402

RESULTS = Path(__file__).parent / "results"


DECODE_LEGEND = "vs float b1 / vs float b8 = this row's tokens/s / the float model's with the same compile choice (> 1 = this row faster); logit err = max |diff| / max |logit| against the float model"
ERROR_LEGEND = ("max_abs_over_max_ref = max |quantised - float logit| / max |float logit|; argmax_agreement"
                " over the first 512 targets; loss_change = held-out loss quantised - float (bundled model, 16 scenes seed 1000)")


def variants(schemes: list[str], compiled: bool) -> list[str]:
    base = ["vlmkit"] + (["vlmkit+compile"] if compiled else [])
    return base + [f"{b.split('+')[0]}+{s}" + ("+compile" if "compile" in b else "") for b in base for s in schemes]


def float_of(variant: str) -> str:
    """The float variant with the same compile choice as `variant`."""
    return "vlmkit+compile" if "compile" in variant.split("+") else "vlmkit"


def ratio_rows(result: dict) -> list[dict]:
    rows = []
    for v, m in result["variants"].items():
        ref = result["variants"][float_of(v)]
        err = m["logit_error"] or {}
        rows.append({
            "case": f"{result['case']} {result['dtype']}", "variant": v + (" (eager fallback)" if m["compiled"] is False else ""),
            "tok/s b1": m["decode_tok_s_b1"], "vs float b1": m["decode_tok_s_b1"] / ref["decode_tok_s_b1"],
            "tok/s b8": m["decode_tok_s_b8"], "vs float b8": m["decode_tok_s_b8"] / ref["decode_tok_s_b8"],
            "prefill ms": m["prefill_s"] * 1e3, "RSS MB": m["peak_rss_mb"],
            "logit err": err.get("max_abs_over_max_ref"), "argmax": err.get("argmax_agreement"),
            "first b8 s": m["first_run_s"]["b8"],
        })
    return rows


def error_report(args) -> dict:
    from vlmkit.generation.quant_report import report

    torch.set_num_threads(1)  # a tiny model: one thread is steadier on a shared machine
    rep = report(schemes=args.schemes.split(","), positions=args.positions, n_scenes=args.error_scenes)
    print(format_table(rep["rows"], list(rep["rows"][0])), flush=True)
    args.error_json.parent.mkdir(exist_ok=True)
    args.error_json.write_text(json.dumps({"meta": run_metadata(None), "kind": "quant-error", "ratio_legend": ERROR_LEGEND, **rep}, indent=1))
    return rep


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="debug:bfloat16,mid-300m:bfloat16", help="comma-separated CASE:DTYPE")
    p.add_argument("--schemes", default="int8,int8-dyn,int4-g32,int4-g64,int4-g128")
    p.add_argument("--decode-schemes", default="int8,int8-dyn,int4-g64", help="schemes timed in decode")
    p.add_argument("--no-compile", action="store_true", help="eager variants only")
    p.add_argument("--error-report", action="store_true", help="only the error report (no decode timing)")
    p.add_argument("--no-error-report", action="store_true", help="only the decode timing")
    p.add_argument("--positions", type=int, default=512, help="target positions compared in the error report")
    p.add_argument("--error-scenes", type=int, default=16, help="held-out scenes scored in the error report")
    p.add_argument("--error-json", type=Path, default=RESULTS / "quant-error-cpu.json")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit-bench")
    p.add_argument("--json", type=Path, default=RESULTS / "quant-decode-cpu.json")
    args = p.parse_args(argv)
    args.family, args.device = "paligemma", "cpu"
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    meta = run_metadata(argv)  # load average first: before this run adds its own
    print(json.dumps(meta), flush=True)
    if not args.no_error_report:
        error_report(args)
    if args.error_report:
        return
    torch.set_num_threads(args.threads or torch.get_num_threads())
    args.workdir.mkdir(parents=True, exist_ok=True)
    hw = hardware("cpu")
    chosen = variants(args.decode_schemes.split(","), not args.no_compile)
    results, rows = [], []
    for item in args.cases.split(","):
        name, _, dtype = item.partition(":")
        results.append(run_case(args.family, name, dtype, chosen, args, hw))
        rows += ratio_rows(results[-1])
        print(format_table(ratio_rows(results[-1]), list(rows[0])), flush=True)
    print("\nvs float = this variant's decode tokens/s / the float variant's with the same compile choice")
    print(format_table(rows, list(rows[0])))
    meta["loadavg_end"] = list(os.getloadavg())
    args.json.parent.mkdir(exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "kind": "quant-decode", "ratio_legend": DECODE_LEGEND, "hardware": hw,
                                     "rows": rows, "results": results}, indent=1))


if __name__ == "__main__":
    main()
