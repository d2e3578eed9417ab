"""Render the README's benchmark tables (Markdown) from committed benchmark JSON.

    python benchmarks/render_table.py benchmarks/results/*.json

Every number the README shows comes from one of these files, written by `bench_generate.py
--json` or `bench_preprocess.py --json`; each table is preceded by where and how its file was
measured (date, command, CPU, bf16/AMX flags, versions, load average at the start) and by the
direction of its ratios, both read from the file. A generation file made before `--family`
existed is PaliGemma's (its results carry no `family`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _num(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return (f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}") + unit


ROOT = Path(__file__).resolve().parents[1]


def shown_path(path: Path) -> str:
    """The file as the README names it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def provenance(meta: dict, path: Path) -> str:
    """One line: file, date, command, CPU and its flags, versions, load average at the start."""
    flags = ", ".join(f for f, on in meta["cpu_flags"].items() if on) or "none of the listed"
    versions = ", ".join(f"{m} {meta[m]}" for m in ("torch", "transformers", "torchao") if meta.get(m))
    load = "load average (1/5/15 min) at start " + "/".join(f"{v:.2f}" for v in meta["loadavg_start"])
    if meta.get("loadavg_end"):
        load += ", at end " + "/".join(f"{v:.2f}" for v in meta["loadavg_end"])
    return (f"`{shown_path(path)}`: {meta['date_utc']}, `{meta['command']}`; {meta['cpu_model']} "
            f"({meta['cpus']} CPUs; {flags}); {versions}; {load}")


def same_tokens(vs: dict) -> str:
    """Greedy tokens identical to the reference's at batch 1 and batch 8: yes, no, or which one."""
    b1, b8 = vs["same_tokens_b1"], vs["same_tokens_b8"]
    return "yes" if b1 and b8 else "b1 only" if b1 else "b8 only" if b8 else "no"


def generate_table(data: dict) -> list[str]:
    legend = data["ratio_legend"]
    lines = [legend[0].upper() + legend[1:] + ".", "",
             "| case | variant | vs | prefill ms | pf x | decode b1 tok/s | b1 x | decode b8 tok/s | b8 x "
             "| peak RSS MB | rss x | same tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in data["results"]:
        for name, m in res["variants"].items():
            vs = m["vs"].get(m["reference"]) or {}
            same = "-" if not vs else same_tokens(vs)
            case = f"{res.get('family', 'paligemma')} {res['case']} {res['dtype']}"
            lines.append(
                f"| {case} | {name} | {m['reference'] or '-'} | {_num(m['prefill_s'] * 1e3)} "
                f"| {_x(vs.get('prefill_speedup'))} | {_num(m['decode_tok_s_b1'])} | {_x(vs.get('decode_b1_speedup'))} "
                f"| {_num(m['decode_tok_s_b8'])} | {_x(vs.get('decode_b8_speedup'))} | {_num(m['peak_rss_mb'])} "
                f"| {_x(vs.get('peak_rss_ratio'))} | {same} |")
    errors = [f"{name} ({res.get('family', 'paligemma')} {res['case']} {res['dtype']}): max |diff| / max |logit| "
              f"{e['max_abs_over_max_ref']:.2%}, argmax agreement {e['argmax_agreement']:.0%}"
              for res in data["results"] for name, m in res["variants"].items() if (e := m.get("logit_error"))]
    if errors:
        lines += ["", "int8 logit error against the same framework's float model: " + "; ".join(errors) + "."]
    return lines


def preprocess_table(data: dict) -> list[str]:
    ref, args = data["reference"], data["args"]
    lines = [f"{args['n']} images {args['src_size']} -> {args['size']}x{args['size']}; reference: transformers "
             f"{ref['transformers']} `{ref['class']}` ({ref['backend']} backend); {data['ratio_legend']}.", "",
             "| variant | images/s | x transformers | max abs diff |", "|---|---|---|---|"]
    lines += [f"| {r['variant']} | {_num(r['images/s'])} | {_x(r['x transformers'])} | {r['max |diff|']:.3g} |"
              for r in data["rows"]]
    return lines


def llamacpp_table(data: dict) -> list[str]:
    """bench_llamacpp.py: one row per weight format pair (batch-1 text decode, best of the reps)."""
    lines = [f"{data['preset']}, prompt {data['prompt_tokens']} tokens + {data['new_tokens']} greedy, "
             f"{data['threads']} threads, best of {data['reps']}; {data['ratio_legend']}.", "",
             "| variant | llama.cpp tok/s | vlmkit tok/s | x llama.cpp | llama.cpp RSS MB | vlmkit RSS MB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {_num(r.get('llama.cpp tok/s'))} | {_num(r['vlmkit tok/s'])} "
              f"| {_x(r.get('x llama.cpp'))} | {_num(r.get('llama.cpp RSS MB'))} | {_num(r['vlmkit RSS MB'])} |"
              for r in data["rows"]]
    return lines


def serve_table(data: dict) -> list[str]:
    """bench_serve.py: the two servers of each dtype side by side at each number of clients."""
    lines = [data["ratio_legend"][0].upper() + data["ratio_legend"][1:] + ".", "",
             "| dtype | variant | clients | requests/s | tokens/s | x one-at-a-time | p50 s | p95 s | rows per step "
             "| same answers |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['variant']} | {r['clients']} | {_num(r['requests/s'])} | {_num(r['tokens/s'])} "
              f"| {_x(r['x one-at-a-time'])} | {_num(r['p50 latency s'])} | {_num(r['p95 latency s'])} "
              f"| {_num(r['rows per step'])} | {'yes' if r['same answers'] else 'no'} |" for r in data["rows"]]
    return lines


def packing_table(data: dict) -> list[str]:
    """bench_packing.py: vision encoder images/s, packed vs padded vs transformers."""
    lines = [f"{len(data['sizes'])} images {data['sizes'][0]} .. {max(data['sizes'], key=lambda s: s[0] * s[1])} "
             f"(height, width), {data['args']['dtype']}, {data['args']['layers']} blocks; {data['ratio_legend']}.", "",
             "| encoder | variant | images/s | x padded | x transformers | max abs diff |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['encoder']} | {r['variant']} | {_num(r['images/s'])} | {_x(r['x padded'])} | "
              f"{_x(r['x transformers'])} | {r['max |diff|']:.3g} |" for r in data["rows"]]
    return lines


def curate_table(data: dict) -> list[str]:
    args = data["args"]
    lines = [f"{args['scenes']} synthetic scenes ({args['image_size']} px), batch {args['batch_size']}, "
             f"{args['threads']} torch threads; {data['ratio_legend']}.", "",
             "| variant | rows | rows/s | rows kept | seconds |", "|---|---|---|---|---|"]
    return lines + [f"| {r['variant']} | {r['rows']} | {_num(r['rows/s'])} | {r['kept']} | {r['seconds']:.2f} |"
                    for r in data["rows"]]


def load_table(data: dict) -> list[str]:
    lines = [f"paligemma {data['shape']} loaded into bfloat16; {data['ratio_legend']}.", "",
             "| from | weights GiB | vlmkit peak / weights | transformers peak / weights | memory vlmkit / tf "
             "| vlmkit s | transformers s |", "|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        folder = f"{data['shape']}-{r['folder']}"
        v, t = data["best"][f"vlmkit:{folder}"], data["best"][f"transformers:{folder}"]
        lines.append(f"| {r['folder']} | {v['final_bytes'] / 2**30:.2f} | {r['vlmkit_peak_over_final']:.2f} | "
                     f"{r['transformers_peak_over_final']:.2f} | {r['mem_vlmkit_over_tf']:.2f} | "
                     f"{v['seconds']:.2f} | {t['seconds']:.2f} |")
    if data.get("quantized"):  # bench_load.py --quantize: vlmkit's quantised loads of the bf16 folder
        lines += ["", "| quantised from bf16 | weights GiB | peak / weights | peak / transformers bf16 | seconds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['final_gib']:.2f} | {r['peak_over_final']:.2f} | "
                  f"{r['peak_over_tf_bf16']:.2f} | {r['seconds']:.2f} |" for r in data["quantized"]]
    return lines


def train_table(data: dict) -> list[str]:
    """bench_train.py: the SigLIP / CoCa contrastive steps against open_clip (PaliGemma rows are
    printed by the script, not rendered here)."""
    ref = next((r["build"] for r in data["contrastive"] if r["framework"] == "open_clip"), {})
    versions = "".join(f", {m} {ref[m]}" for m in ("open_clip", "timm") if ref.get(m))
    lines = [f"{data['threads']} torch threads, {data['precision']}{versions}; {data['ratio_legend']}.", "",
             "| case | framework | torch | params M | batch | samples/s | x open_clip | median x open_clip "
             "| peak RSS MB | rss x open_clip | frac |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {r['case']} | {r['framework']} | {r['torch']} | {r['params M']:.1f} | {r['batch']} "
                    f"| {_num(r['samples/s'])} | {_x(r.get('x open_clip'))} | {_x(r.get('median x open_clip'))} "
                    f"| {_num(r['peak RSS MB'])} "
                    f"| {_x(r.get('rss x open_clip'))} | {_num(r['frac'])} |" for r in data["contrastive"]]


def _cell(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def rows_table(data: dict) -> list[str]:
    """Any result whose rows are flat dicts (the quantisation files): one column per key."""
    keys = list(dict.fromkeys(k for r in data["rows"] for k in r))
    return [f"{data['ratio_legend']}.", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
            *["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in data["rows"]]]


TABLES = {"quant-decode": rows_table, "quant-error": rows_table, "quant-kernels": rows_table,
          "serve": serve_table, "curate": curate_table, "load": load_table, "preprocess": preprocess_table,
          "train": train_table, "generate": generate_table, "llamacpp": llamacpp_table, "packing": packing_table,
          "dedup": rows_table}


def kind_of(data: dict) -> str:
    """A result file's kind: its "kind" (or bench_serve's "benchmark") field; the files of scripts
    that write neither are known by a key of their own."""
    if data.get("kind") or data.get("benchmark"):
        return data.get("kind") or data["benchmark"]
    return next((k for key, k in (("results", "generate"), ("pairs", "llamacpp"), ("sizes", "packing")) if key in data),
                "preprocess")


def render(path: Path) -> str:
    """Markdown for one committed JSON file (generation, preprocessing or packing results)."""
    data = json.loads(path.read_text())
    if "meta" not in data:
        raise SystemExit(f"{path}: no 'meta' block (written by an older benchmark script?)")
    body = TABLES[kind_of(data)](data)
    return "\n".join([f"Measured: {provenance(data['meta'], path)}.", "", *body])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="JSON written by bench_generate.py / bench_preprocess.py")
    a = p.parse_args(argv)
    print("\n\n".join(render(f) for f in a.files))


if __name__ == "__main__":
    sys.exit(main())
