"""Evaluate a PaliGemma folder on a synthetic manifest with vlmkit's metric functions.

    python scripts/eval_shapes_tiny.py --model runs/shapes_tiny/export \
        --data /tmp/shapes_test/manifest.jsonl --out eval.json

Greedy decoding, every row of the manifest (or the first --limit per task). Reports, per task:
caption CIDEr-D and BLEU-4; VQA exact match after VQA answer normalisation (one reference per
question, so the 10-annotator VQA formula does not apply); detection mAP@0.5 / mAP@[.5:.95] and
precision/recall at IoU 0.5, each row (one query on one image) treated as one image; OCR exact
match and character error rate. Also per-subtask accuracy, which is what to look at when a task
misses its bar. `vlmkit eval` (vlmkit.eval.runner) is the library route to the same numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

import vlmkit
from vlmkit.eval import (ImageBoxes, average_precision, bleu, character_error_rate, cider_d, exact_match,
                         normalize_vqa_answer, precision_recall)
from vlmkit.generation import SamplingConfig
from vlmkit.tasks.parsing import parse_detections


def predict(pipe, rows: list[dict], root: Path, batch_size: int) -> list[str]:
    """Greedy answers for `rows` (manifest dicts with "image" relative to `root`)."""
    out = []
    sampling = SamplingConfig(max_new_tokens=64)
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        results = pipe.generate_batch([r["prefix"] for r in chunk], [str(root / r["image"]) for r in chunk],
                                      sampling)
        out += [r.text.strip() for r in results]
    return out


def detection_metrics(rows: list[dict], preds: list[str]) -> dict:
    """mAP and P/R at IoU 0.5 with each row as one image; labels are the queried names."""
    gts, dets = [], []
    for row, text in zip(rows, preds):
        w, h = row["image_size"]
        gts.append(ImageBoxes(boxes=row["boxes"], labels=row["labels"]))
        boxes = parse_detections(text, w, h).boxes
        dets.append(ImageBoxes(boxes=[[b.x1, b.y1, b.x2, b.y2] for b in boxes] or [],
                               labels=[b.label for b in boxes]))
    ap = average_precision(dets, gts)
    pr = precision_recall(dets, gts, iou_threshold=0.5)
    return {"map_50": ap.map_50, "map_50_95": ap.map_50_95, "precision_50": pr.precision,
            "recall_50": pr.recall, "exact_text": exact_match(preds, [r["suffix"] for r in rows], normalize=None)}


def task_metrics(task: str, rows: list[dict], preds: list[str]) -> dict:
    refs = [r["suffix"] for r in rows]
    if task == "caption":
        return {"cider_d": cider_d(preds, [[r] for r in refs]).corpus,
                "bleu_4": bleu(preds, [[r] for r in refs]).corpus[3],
                "exact": exact_match(preds, refs, normalize=None)}
    if task == "vqa":
        return {"accuracy": exact_match(preds, refs, normalize=normalize_vqa_answer)}
    if task == "detect":
        return detection_metrics(rows, preds)
    if task == "ocr":
        return {"exact_match": exact_match(preds, refs, normalize=None),
                "cer": character_error_rate(preds, refs).rate}
    raise ValueError(f"unknown task {task!r}")


def per_subtask(rows: list[dict], preds: list[str]) -> dict[str, float]:
    """Exact-match accuracy (VQA-normalised) of the whole answer text per subtask."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, p in zip(rows, preds):
        hits[row.get("subtask", row["task"])].append(normalize_vqa_answer(p) == normalize_vqa_answer(row["suffix"]))
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vlmkit-shapes-tiny", help="bundled model name or HF folder")
    p.add_argument("--data", required=True, help="manifest.jsonl written by `vlmkit data synth`")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="at most this many rows per task (0 = all)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the metrics as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    pipe = vlmkit.load(a.model, dtype=a.dtype)
    root = Path(a.data).parent
    by_task: dict[str, list[dict]] = defaultdict(list)
    for line in Path(a.data).read_text().splitlines():
        row = json.loads(line)
        by_task[row["task"]].append(row)
    report, failures = {}, {}
    for task in sorted(by_task):
        rows = by_task[task][: a.limit or None]
        t0 = time.perf_counter()
        preds = predict(pipe, rows, root, a.batch_size)
        report[task] = {"n": len(rows), **task_metrics(task, rows, preds),
                        "subtasks": per_subtask(rows, preds), "seconds": time.perf_counter() - t0}
        failures[task] = [{"image": r["image"], "prefix": r["prefix"], "want": r["suffix"], "got": q}
                          for r, q in zip(rows, preds) if q != r["suffix"]][:20]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in report[task].items() if isinstance(v, float))
        print(f"{task:8s} n={len(rows):5d} | {shown}", flush=True)
        print(f"         subtasks: {json.dumps({k: round(v, 4) for k, v in report[task]['subtasks'].items()})}")
    if a.out:
        Path(a.out).write_text(json.dumps({"metrics": report, "failures": failures}, indent=1))
    return report


if __name__ == "__main__":
    main()
