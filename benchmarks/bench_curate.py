"""Curation throughput: rows/s of `vlmkit data curate` with and without the score filter.

    .venv/bin/python benchmarks/bench_curate.py --scenes 250 --threads 1 --json benchmarks/results/curate-cpu.json

Input: `vlmkit data synth` rows (a JSONL manifest of `--scenes` scenes, 4 rows each, PNG images).
Variants, each a fresh output folder (best of `--reps` runs is reported, every run kept in the JSON):

- heuristic rules: the default rules (text length / repetition / patterns, image decode / size /
  aspect / uniform, exact dedup): no model;
- + clip_score: the same plus the SigLIP score filter with a random-weight `debug` two-tower
  (`vlmkit create --family siglip --preset debug`), batched by `--batch-size`;
- + phash + embed_dedup: the same plus perceptual and embedding dedup (FAISS) with that model;
- with `--ocr N`: heuristic rules + ocr_caption (RapidOCR) on the first N rows only (OCR is two
  orders of magnitude slower than the rest, so it gets its own, smaller input).

No reference library does this job, so there are no ratios: rows/s of one process, higher is
faster. Model loading and the first pass that fits nothing are inside the timing (a real run pays
them too); the input is rendered before timing starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_metadata  # noqa: E402

LEGEND = "rows/s of one process, higher is faster (no reference library: no ratios)"


def _variants(model: str) -> dict[str, dict]:
    from vlmkit.curation.config import DEFAULT_RULES

    base = {name: {} for name in DEFAULT_RULES}
    score = base | {"clip_score": {"model": model, "threshold": -1.0}}
    return {"heuristic rules": base, "+ clip_score": score,
            "+ phash + embed_dedup": score | {"phash_dedup": {}, "embed_dedup": {"model": model, "threshold": 0.999}}}


def _time_one(manifest: Path, rules: dict, batch: int, work: Path) -> tuple[float, dict]:
    from vlmkit.curation.config import parse_config
    from vlmkit.curation.engine import curate

    cfg = parse_config({"run": {"batch_size": batch, "checkpoint_rows": 4096}, "rules": rules})
    out = Path(tempfile.mkdtemp(dir=work)) / "out"
    t0 = time.perf_counter()
    report = curate(manifest, out, cfg)
    return time.perf_counter() - t0, report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=250, help="synthetic scenes (4 rows each)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--ocr", type=int, default=0, help="also time ocr_caption on the first N rows")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    meta = run_metadata(argv)
    from vlmkit.data.synth import SynthConfig, write_dataset
    from vlmkit.weights.create import create_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = write_dataset(work / "data", a.scenes, SynthConfig(image_size=a.image_size))
        model = str(create_checkpoint(work / "siglip", "debug", family="siglip"))
        inputs = {name: (manifest, rules) for name, rules in _variants(model).items()}
        if a.ocr:
            small = work / "ocr" / "manifest.jsonl"
            small.parent.mkdir()
            lines = manifest.read_text().splitlines()[: a.ocr]
            small.write_text("".join(line.replace('"images/', f'"{manifest.parent}/images/') + "\n" for line in lines))
            base = _variants(model)["heuristic rules"]
            inputs[f"heuristic + ocr_caption ({a.ocr} rows)"] = (small, base | {"ocr_caption": {}})
        for name, (src, rules) in inputs.items():
            runs = [_time_one(src, rules, a.batch_size, work) for _ in range(a.reps)]
            best, report = min(runs, key=lambda r: r[0])
            rows.append({"variant": name, "rows/s": report["rows_in"] / best, "rows": report["rows_in"],
                         "kept": report["rows_out"], "seconds": best, "all_seconds": [r[0] for r in runs]})  # fmt: skip
    meta["loadavg_end"] = list(os.getloadavg())
    print(f"{a.scenes} scenes, {a.image_size} px, batch {a.batch_size}, torch threads "
          f"{torch.get_num_threads()}, load average at start {meta['loadavg_start'][0]:.2f}; {LEGEND}")
    print("| variant | rows | rows/s | rows kept | seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['rows']} | {r['rows/s']:.1f} | {r['kept']} | {r['seconds']:.2f} |")
    if a.json:
        args = {"scenes": a.scenes, "ocr_rows": a.ocr, "image_size": a.image_size, "batch_size": a.batch_size, "reps": a.reps,
                "threads": torch.get_num_threads()}  # fmt: skip
        data = {"meta": meta, "kind": "curate", "ratio_legend": LEGEND, "args": args, "rows": rows}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
