"""Evaluate a PaliGemma pipeline on a PaLI-style manifest: batched greedy answers -> task metrics.

A manifest row is ``{"image", "prefix", "suffix", "task", ...}`` (what `vlmkit data synth`
writes). Per task:

=========  ==============================================  ======================================
task       ground truth taken from the row                 metrics
=========  ==============================================  ======================================
caption    all rows sharing (image, prefix) pooled; each   CIDEr-D, BLEU-4, exact match (any ref,
           gives its "references" list, else its suffix    case/space-insensitive)
vqa        "answers" (list of str or {"answer": str})      accuracy: VQA accuracy for rows with
           if present, else `suffix`                       >= 2 answers, normalised exact match
                                                           for one; exact_match vs the majority
detect     "boxes" (pixel x1 y1 x2 y2) + "labels" +        P/R at IoU 0.5, mAP@0.5, mAP@[.5:.95]
           "image_size" [w, h]; else `suffix` parsed       (no scores: output order is the rank)
ocr        `suffix`                                        CER, exact match (case-sensitive)
=========  ==============================================  ======================================

Each row is one "image" for detection metrics: a detect row asks for some classes only, so its
ground truth lists just those. Each example also gets a per-example `score` (CIDEr-D, VQA
accuracy, F1@0.5, exact match) averaged per `subtask` (a row field; the task name if absent),
which is where to look when a task misses its bar. CIDEr-D's document frequencies come from the
references of the examples scored together, as in pycocoevalcap, so `--limit` changes it.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit.data.image import load_image
from vlmkit.errors import ConfigError, DataError, ParseError
from vlmkit.eval.detection import ImageBoxes, average_precision, precision_recall
from vlmkit.eval.text_metrics import (bleu, character_error_rate, cider_d, exact_match,
                                      normalize_vqa_answer, vqa_accuracy)
from vlmkit.generation import SamplingConfig
from vlmkit.outputs import atomic_write_bytes
from vlmkit.tasks.parsing import clean_text, parse_detections

EVAL_TASKS = ("caption", "vqa", "detect", "ocr")
# What the per-example `score` is, per task (printed above the per-subtask table).
SCORE_NAMES = {"caption": "CIDEr-D", "vqa": "VQA accuracy", "detect": "F1@0.5", "ocr": "exact match",
               "zeroshot": "top-1 correct", "retrieval": "text->image top-1"}  # the last two: eval.two_tower


@dataclass(kw_only=True)
class EvalReport:
    """Result of `evaluate`.

    Attributes:
        task: one of EVAL_TASKS.
        metrics: corpus-level numbers (see the module docstring), all floats.
        by_subtask: subtask -> {"n": count, "score": mean per-example score}.
        examples: one JSON-ready dict per example (prompt, prediction, ground truth, score, ...).
        seconds: wall time of generation plus scoring.
    """

    task: str
    metrics: dict[str, float]
    by_subtask: dict[str, dict[str, float]]
    examples: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    model: str | None = None

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def to_json(self) -> dict:
        """Summary without the per-example records (those go to the JSONL file)."""
        # NaN (e.g. mAP with no ground-truth boxes at all) is not valid JSON: written as null.
        metrics = {k: None if math.isnan(v) else v for k, v in self.metrics.items()}
        return {"task": self.task, "model": self.model, "num_examples": self.num_examples,
                "metrics": metrics, "by_subtask": self.by_subtask,
                "score": SCORE_NAMES[self.task], "seconds": round(self.seconds, 3)}

    def format_table(self) -> str:
        """Human-readable table of metrics and per-subtask scores."""
        head = f"{self.task}: {self.num_examples} examples in {self.seconds:.1f} s"
        lines = [head + (f" ({self.model})" if self.model else ""), f"  {'metric':<18}{'value':>10}"]
        lines += [f"  {k:<18}{v:>10.4f}" for k, v in self.metrics.items()]
        if self.by_subtask:
            lines.append(f"  {'subtask':<18}{'n':>10}  {SCORE_NAMES[self.task]}")
            lines += [f"  {k:<18}{int(v['n']):>10}  {v['score']:.4f}" for k, v in self.by_subtask.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------


def _manifest_file(path: str | Path) -> Path:
    """`path` as a readable regular file, or a DataError saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        inside = path / "manifest.jsonl"  # what `vlmkit data synth` writes
        hint = f"did you mean {inside}?" if inside.is_file() else "pass the .jsonl file itself"
        raise DataError(f"manifest {path} is a folder, not a manifest file; {hint}")
    if not path.exists():
        raise DataError(f"manifest {path} does not exist")
    if not path.is_file():
        raise DataError(f"manifest {path} is not a regular file")
    return path


def read_manifest(path: str | Path) -> list[dict]:
    """All rows of a JSONL manifest, relative image paths made absolute (manifest's folder).

    Unlike the training reader, nothing is skipped: a dropped row would silently change the
    metric's denominator. Raises DataError naming the first bad line.
    """
    path = _manifest_file(path)
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # strict: a replaced byte would change a prompt or answer
                raise DataError(f"{path}:{n} is not UTF-8 text (byte {e.start + 1}); "
                                "a manifest is JSON Lines") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{n} is not valid JSON (a manifest is JSON Lines: one object a "
                                "line)") from None
            image = row.get("image") if isinstance(row, dict) else None
            if isinstance(image, str):
                row["image"] = str(path.parent / image)  # an absolute path stays as is
            elif isinstance(image, list) and image and all(isinstance(i, str) for i in image):
                row["image"] = [str(path.parent / i) for i in image]  # several images / frames
            else:
                raise DataError(f"{path}:{n} needs an object with an 'image' path (or list of paths)")
            row.setdefault("line", n)
            rows.append(row)
    if not rows:
        raise DataError(f"manifest {path} has no rows (the file is empty or blank)")
    return rows


def _texts(value, what: str) -> list[str]:
    """A list of answer strings from a list of str or of {"answer": str} (VQA v2 style)."""
    if isinstance(value, str) or not isinstance(value, list) or not value:
        raise DataError(f"{what} must be a non-empty list")
    out = [v.get("answer") if isinstance(v, dict) else v for v in value]
    if not all(isinstance(v, str) for v in out):
        raise DataError(f"{what} must hold strings (or {{'answer': str}} objects)")
    return out


def _own_references(row: dict, task: str) -> list[str]:
    for key in ("answers", "references") if task == "vqa" else ("references",):
        if key in row:
            return _texts(row[key], f"row {row.get('line', '?')} field {key!r}")
    if task == "detect" and "boxes" in row:  # an empty suffix is a valid "nothing there" row
        return [row.get("suffix") if isinstance(row.get("suffix"), str) else ""]
    if not isinstance(row.get("suffix"), str) or not row["suffix"].strip():
        raise DataError(f"{task} row {row.get('line', '?')} has no 'suffix' to compare with")
    return [row["suffix"]]


def _group_captions(rows: list[dict]) -> list[dict]:
    """One row per (image, prefix) with all its reference captions under "references"."""
    grouped: dict[tuple, dict] = {}
    for row in rows:
        image = row["image"]
        key = (tuple(image) if isinstance(image, list) else image if isinstance(image, str) else id(image),
               row["prefix"])
        if key in grouped:
            grouped[key]["references"] += _own_references(row, "caption")
        else:
            grouped[key] = {**row, "references": list(_own_references(row, "caption"))}
    return list(grouped.values())


def select_rows(rows: Sequence[dict], task: str, limit: int | None = None) -> list[dict]:
    """Rows of `task` (all rows if none has a "task" field), captions grouped, first `limit`.

    Idempotent, so already-selected rows can be passed again. Raises ConfigError for an unknown
    task or bad limit, DataError when no row is left or a row lacks its ground truth.
    """
    if task not in EVAL_TASKS:
        raise ConfigError(f"unknown eval task {task!r}; expected one of: {', '.join(EVAL_TASKS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    has_task = any("task" in r for r in rows)
    chosen = [dict(r) for r in rows if not has_task or r.get("task") == task]
    if not chosen:
        present = sorted({str(r.get("task")) for r in rows})
        raise DataError(f"no {task!r} rows to evaluate (tasks present: {', '.join(present) or 'none'})")
    for r in chosen:
        if not isinstance(r.get("prefix"), str) or "image" not in r:
            raise DataError(f"row {r.get('line', '?')} needs 'image' and a 'prefix' string")
    if task == "caption":
        chosen = _group_captions(chosen)
    else:
        for r in chosen:
            r["references"] = _own_references(r, task)
    return chosen[:limit]


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def predict(pipe, rows: Sequence[dict], batch_size: int, sampling: SamplingConfig,
            progress: Callable[[int, int], None] | None = None) -> tuple[list[str], list[tuple[int, int]]]:
    """Raw generated text and original (w, h) of each row's image, `batch_size` rows at a time.

    `pipe` needs only `generate_batch(prompts, images, sampling) -> [result with .text]`.
    Images are decoded one batch at a time, so a large split never sits in memory. A row whose
    "image" is a list (several images / video frames) reports the size of its first image.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    texts, sizes = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = [[load_image(i) for i in r["image"]] if isinstance(r["image"], list) else load_image(r["image"])
                  for r in chunk]
        results = pipe.generate_batch([r["prefix"] for r in chunk], images, sampling)
        texts += [res.text for res in results]
        sizes += [(im[0] if isinstance(im, list) else im).size for im in images]
        if progress is not None:
            progress(len(texts), len(rows))
    return texts, sizes


# ---------------------------------------------------------------------------------------------
# Scoring: each returns (metrics, per-example records)
# ---------------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def score_caption(preds: list[str], refs: list[list[str]]) -> tuple[dict, list[dict]]:
    cider, bl = cider_d(preds, refs), bleu(preds, refs)
    hits = [float(_fold(p) in {_fold(r) for r in rs}) for p, rs in zip(preds, refs)]
    metrics = {"cider_d": cider.corpus, "bleu_4": bl.corpus[3], "exact_match": sum(hits) / len(hits)}
    per = [{"score": c, "bleu_4": b[3], "exact": bool(h)}
           for c, b, h in zip(cider.per_sample, bl.per_sample, hits)]
    return metrics, per


def _majority(answers: list[str]) -> str:
    """Most common normalised answer; ties go to the one given first."""
    counts = Counter(normalize_vqa_answer(a) for a in answers)
    return max(counts, key=lambda a: (counts[a], -list(counts).index(a)))


def score_vqa(preds: list[str], refs: list[list[str]]) -> tuple[dict, list[dict]]:
    scores = [vqa_accuracy(p, rs) if len(rs) >= 2 else float(exact_match([p], rs)) for p, rs in zip(preds, refs)]
    majority = [_majority(rs) for rs in refs]
    em = exact_match(preds, majority)
    per = [{"score": s, "exact": normalize_vqa_answer(p) == m} for s, p, m in zip(scores, preds, majority)]
    return {"accuracy": sum(scores) / len(scores), "exact_match": em}, per


def score_ocr(preds: list[str], refs: list[list[str]]) -> tuple[dict, list[dict]]:
    targets = [rs[0] for rs in refs]
    cer = character_error_rate(preds, targets)
    hits = [float(p == t) for p, t in zip(preds, targets)]
    per = [{"score": h, "cer": c} for h, c in zip(hits, cer.per_sample)]
    return {"cer": cer.rate, "exact_match": sum(hits) / len(hits)}, per


def _truth_boxes(row: dict, size: tuple[int, int]) -> ImageBoxes:
    """Ground truth from "boxes"/"labels", else parsed (strictly) from the row's suffix."""
    if "boxes" in row:
        labels = row.get("labels")
        if not isinstance(labels, list):
            raise DataError(f"detect row {row.get('line', '?')} has 'boxes' but no 'labels' list")
        return ImageBoxes(boxes=row["boxes"], labels=labels)
    try:
        parsed = parse_detections(row["references"][0], *size, strict=True)
    except ParseError as e:
        raise DataError(f"detect row {row.get('line', '?')}: cannot parse its suffix ({e})") from None
    return ImageBoxes(boxes=[[b.x1, b.y1, b.x2, b.y2] for b in parsed.boxes],
                      labels=[b.label for b in parsed.boxes])


def score_detect(raw: list[str], rows: list[dict], sizes: list[tuple[int, int]]) -> tuple[dict, list[dict]]:
    preds, truths, per = [], [], []
    for text, row, image_size in zip(raw, rows, sizes):
        # Boxes are in pixels of the frame the ground truth was written in, i.e. the original image.
        w, h = (int(v) for v in row.get("image_size", image_size))
        parsed = parse_detections(text, w, h)
        pred = ImageBoxes(boxes=[[b.x1, b.y1, b.x2, b.y2] for b in parsed.boxes],
                          labels=[b.label for b in parsed.boxes])
        truth = _truth_boxes(row, (w, h))
        pr = precision_recall([pred], [truth], iou_threshold=0.5)
        tp, fp, fn = pr.true_positives, pr.false_positives, pr.false_negatives
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0  # nothing asked, nothing given
        per.append({"score": f1, "tp": tp, "fp": fp, "fn": fn, "parse_errors": parsed.errors,
                    "pred_boxes": [[b.label, *(round(v, 2) for v in (b.x1, b.y1, b.x2, b.y2))]
                                   for b in parsed.boxes]})
        preds.append(pred)
        truths.append(truth)
    pr = precision_recall(preds, truths, iou_threshold=0.5)
    ap = average_precision(preds, truths)
    metrics = {"precision_50": pr.precision, "recall_50": pr.recall, "map_50": ap.map_50,
               "map_50_95": ap.map_50_95,
               "parse_error_rate": sum(bool(p["parse_errors"]) for p in per) / len(per)}
    return metrics, per


# ---------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------


def _by_subtask(rows: list[dict], per: list[dict], task: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = {}
    for row, p in zip(rows, per):
        groups.setdefault(str(row.get("subtask") or task), []).append(p["score"])
    return {k: {"n": len(v), "score": sum(v) / len(v)} for k, v in sorted(groups.items())}


def evaluate(pipe, rows: Sequence[dict], task: str, batch_size: int = 16, *,
             sampling: SamplingConfig | None = None, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Greedy-decode every `task` row with `pipe` and score it (see the module docstring).

    Args:
        pipe: a `vlmkit.pipeline.Pipeline` (or anything with its `generate_batch`).
        rows: manifest rows (`read_manifest`); "image" is a path or a PIL image.
        task: caption | vqa | detect | ocr; rows of other tasks are ignored.
        batch_size: rows per `generate_batch` call.
        sampling: default greedy with 64 new tokens.
        limit: score only the first `limit` examples (after grouping captions).
        progress: called as progress(done, total) after each batch.
    """
    t0 = time.perf_counter()
    rows = select_rows(rows, task, limit)
    sampling = sampling or SamplingConfig(max_new_tokens=64)
    raw, sizes = predict(pipe, rows, batch_size, sampling, progress)
    preds = [clean_text(t) for t in raw]
    refs = [r["references"] for r in rows]
    if task == "detect":
        metrics, per = score_detect(raw, rows, sizes)
    else:
        metrics, per = {"caption": score_caption, "vqa": score_vqa, "ocr": score_ocr}[task](preds, refs)
    examples = []
    for i, (row, text, p) in enumerate(zip(rows, raw, per)):
        image = row["image"] if isinstance(row["image"], str) else None  # PIL images are not JSON
        if isinstance(row["image"], list):
            image = [i if isinstance(i, str) else None for i in row["image"]]
        pred = text.strip() if task == "detect" else preds[i]
        examples.append({"index": i, "image": image, "line": row.get("line"), "subtask": row.get("subtask"),
                         "prefix": row["prefix"], "prediction": pred, "references": row["references"], **p})
    folder = getattr(pipe, "folder", None)
    return EvalReport(task=task, metrics=metrics, by_subtask=_by_subtask(rows, per, task), examples=examples,
                      seconds=time.perf_counter() - t0, model=str(folder) if folder else None)


def predictions_path(json_path: str | Path) -> Path:
    """Where the per-example JSONL goes: ``out.json`` -> ``out.predictions.jsonl``."""
    p = Path(json_path)
    return p.with_name(p.stem + ".predictions.jsonl")


def write_report(report: EvalReport, json_path: str | Path) -> tuple[Path, Path]:
    """Write the summary JSON and the per-example JSONL beside it; return both paths."""
    json_path = Path(json_path)
    jsonl = predictions_path(json_path)
    lines = "".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in report.examples)
    try:  # each file appears whole or not at all
        atomic_write_bytes(json_path, (json.dumps(report.to_json(), indent=2) + "\n").encode())
        atomic_write_bytes(jsonl, lines.encode("utf-8"))
    except OSError as e:
        raise DataError(f"cannot write eval results to {json_path}: {e.strerror or e}") from None
    return json_path, jsonl
