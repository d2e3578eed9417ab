"""`vlmkit eval`: score a model on one task of a manifest (thin layer over `runner` and `two_tower`).

    vlmkit eval --model runs/x/export --data test/manifest.jsonl --task detect --json det.json
    vlmkit eval --model runs/siglip/export --data labelled.jsonl --task zeroshot --labels "cat,dog"

prints a metrics table and, with --json, writes det.json (summary) and det.predictions.jsonl
(one record per example: prompt, prediction, ground truth, score).
"""

from __future__ import annotations

import argparse
import sys

from vlmkit import cli_types as T
from vlmkit.errors import ConfigError
from vlmkit.eval.two_tower import TWO_TOWER_TASKS
from vlmkit.eval.runner import EVAL_TASKS, evaluate, predictions_path, read_manifest, select_rows, write_report
from vlmkit.outputs import check_output_file


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `vlmkit eval` flags to `parser`."""
    parser.description = ("Evaluate a model on one task of a JSONL manifest. A vlm with greedy decoding: "
                          "caption (CIDEr-D, BLEU-4), vqa (VQA accuracy / exact match), detect (P/R@0.5, "
                          "mAP@0.5, mAP@[.5:.95]) or ocr (CER, exact match); an image-text model (siglip, "
                          "coca): zeroshot (top-1/5 accuracy, rows {image, label}) or retrieval (R@1/5/10 "
                          "both directions, rows {image, caption}).")
    parser.add_argument("--model", help="checkpoint folder or bundled model name (default: the bundled model)")
    parser.add_argument("--data", required=True, help="manifest.jsonl (rows with image, prefix, suffix, task; "
                        "zeroshot: image, label; retrieval: image, caption)")
    parser.add_argument("--task", required=True, choices=EVAL_TASKS + TWO_TOWER_TASKS, help="which rows to evaluate")
    parser.add_argument("--labels", help="zeroshot: class names, comma-separated or a file, one a line "
                        "(default: the manifest's labels)")
    parser.add_argument("--templates", action="append", metavar="TEMPLATE|FILE",
                        help="zeroshot: prompt template with {} (repeat, or a file; default \"a photo of a {}.\")")
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
    if args.task in TWO_TOWER_TASKS:
        return _finish(args, _two_tower_report(args))
    # Read and check the rows before loading the model, so a bad manifest fails fast.
    rows = select_rows(read_manifest(args.data), args.task, args.limit)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    pipe = load(args.model, dtype=args.dtype, device=args.device)
    report = evaluate(pipe, rows, args.task, args.batch_size, sampling=sampling,
                      progress=None if args.quiet else _progress)
    print_bundled_notice(pipe)
    return _finish(args, report)


def _finish(args: argparse.Namespace, report) -> int:
    print(report.format_table())
    if args.json:
        summary, predictions = write_report(report, args.json)
        print(f"wrote {summary} and {predictions}")
    return 0


def _two_tower_report(args: argparse.Namespace):
    """zeroshot / retrieval with an image-text model (`vlmkit.eval.two_tower`)."""
    from vlmkit.eval.two_tower import evaluate_retrieval, evaluate_zeroshot, zeroshot_labels
    from vlmkit.two_tower import TwoTower
    from vlmkit.two_tower_cli import parse_labels, parse_templates

    rows = read_manifest(args.data)[:args.limit]
    labels = parse_labels(args.labels) if args.labels else None
    templates = parse_templates(args.templates)
    if args.task == "zeroshot":
        zeroshot_labels(rows, labels)  # a bad manifest fails before the model loads
    tt = TwoTower.load(args.model, dtype=args.dtype, device=args.device)
    tt.batch_size = args.batch_size
    if args.task == "zeroshot":
        return evaluate_zeroshot(tt, rows, labels, templates)
    return evaluate_retrieval(tt, rows)
