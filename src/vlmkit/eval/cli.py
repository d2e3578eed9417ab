"""`vlmkit eval`: score a PaliGemma model on one task of a manifest (thin layer over `runner`).

    vlmkit eval --model runs/x/export --data test/manifest.jsonl --task detect --json det.json

prints a metrics table and, with --json, writes det.json (summary) and det.predictions.jsonl
(one record per example: prompt, prediction, ground truth, score).
"""

from __future__ import annotations

import argparse
import sys

from vlmkit import cli_types as T
from vlmkit.errors import ConfigError
from vlmkit.eval.runner import EVAL_TASKS, evaluate, predictions_path, read_manifest, select_rows, write_report
from vlmkit.outputs import check_output_file


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vlmkit eval` flags to `parser`."""
    parser.description = ("Evaluate a PaliGemma model on one task of a JSONL manifest with greedy decoding: "
                          "caption (CIDEr-D, BLEU-4), vqa (VQA accuracy / exact match), detect (P/R@0.5, "
                          "mAP@0.5, mAP@[.5:.95]) or ocr (CER, exact match).")
    parser.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    parser.add_argument("--data", required=True, help="manifest.jsonl (rows with image, prefix, suffix, task)")
    parser.add_argument("--task", required=True, choices=EVAL_TASKS, help="which rows to evaluate")
    parser.add_argument("--limit", type=T.positive_int, help="evaluate only the first N examples")
    parser.add_argument("--batch-size", type=T.positive_int, default=16, help="rows per generation batch (default 16)")
    parser.add_argument("--max-new-tokens", type=T.positive_int, default=64,
                        help="generation budget per row (default 64)")
    parser.add_argument("--json", metavar="OUT.json",
                        help="write the summary here and per-example predictions to OUT.predictions.jsonl")
    parser.add_argument("--force", action="store_true", help="replace existing --json output files")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", type=T.device, default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _progress(done: int, total: int) -> None:
    end = "\n" if done == total else ""
    print(f"\r  generated {done}/{total}", end=end, file=sys.stderr, flush=True)


def run_eval_args(args: argparse.Namespace) -> int:
    """Run `vlmkit eval` for parsed `args`; returns the exit code (VlmkitError propagates)."""
    from vlmkit.generation import SamplingConfig
    from vlmkit.pipeline import load
    from vlmkit.tasks.run import print_bundled_notice

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.json:  # refuse existing outputs before hours of generation, not after
        for path in (args.json, predictions_path(args.json)):
            check_output_file(path, args.force)
    # Read and check the rows before loading the model, so a bad manifest fails fast.
    rows = select_rows(read_manifest(args.data), args.task, args.limit)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    pipe = load(args.model, dtype=args.dtype, device=args.device)
    report = evaluate(pipe, rows, args.task, args.batch_size, sampling=sampling,
                      progress=None if args.quiet else _progress)
    print_bundled_notice(pipe)
    print(report.format_table())
    if args.json:
        summary, predictions = write_report(report, args.json)
        print(f"wrote {summary} and {predictions}")
    return 0
