"""Evaluate an image-text model (`vlmkit.two_tower.TwoTower`) on a JSONL manifest.

Axes: I images, T texts, C classes.

=========  ===============================================  =====================================
task       row fields                                       metrics
=========  ===============================================  =====================================
zeroshot   "image", "label" (a class name); the classes     top1, top5 accuracy (prompt-ensembled
           are `labels` if given, else the manifest's       class embeddings, `zeroshot_accuracy`)
           labels in order of first appearance
retrieval  "image" and a "caption" / "text" / "suffix"      i2t_r1/5/10, t2i_r1/5/10
           string or a "captions" list; rows naming the     (`retrieval_recall_from_embeddings`,
           same image pool their captions                   ties count against the model)
=========  ===============================================  =====================================

Per example (the predictions JSONL): zeroshot, each image with its predicted class and `score` 1
if right; retrieval, each caption with the image ranked first and `score` 1 if that is its own.
`by_subtask` holds the per-class accuracy (zeroshot) or the per-caption hit rate (retrieval).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from vlmkit.errors import DataError
from vlmkit.eval.retrieval import retrieval_recall_from_embeddings, zeroshot_accuracy
from vlmkit.eval.runner import EvalReport

TWO_TOWER_TASKS = ("zeroshot", "retrieval")
CAPTION_KEYS = ("caption", "text", "suffix")


def zeroshot_labels(rows: Sequence[dict], labels: Sequence[str] | None = None) -> tuple[list[str], torch.Tensor]:
    """(class names, each row's class index int64 [I]); DataError naming a row without a known label."""
    for r in rows:
        if not isinstance(r.get("label"), str) or not r["label"].strip():
            raise DataError(f"zeroshot row {r.get('line', '?')} needs a 'label' string (its class name)")
    names = list(labels) if labels else list(dict.fromkeys(r["label"].strip() for r in rows))
    index = {n: i for i, n in enumerate(names)}
    for r in rows:
        if r["label"].strip() not in index:
            raise DataError(f"zeroshot row {r.get('line', '?')}: label {r['label']!r} is not among the "
                            f"{len(names)} class labels given")
    return names, torch.tensor([index[r["label"].strip()] for r in rows], dtype=torch.long)


def _captions(row: dict) -> list[str]:
    if isinstance(row.get("captions"), list) and row["captions"] and all(isinstance(c, str) for c in row["captions"]):
        return list(row["captions"])
    for key in CAPTION_KEYS:
        if isinstance(row.get(key), str) and row[key].strip():
            return [row[key]]
    raise DataError(f"retrieval row {row.get('line', '?')} needs a 'caption' string or a 'captions' list")


def retrieval_pairs(rows: Sequence[dict]) -> tuple[list[str], list[str], torch.Tensor]:
    """(distinct images, captions, the image index of each caption int64 [T])."""
    images: dict[str, int] = {}
    texts, owner = [], []
    for r in rows:
        if not isinstance(r["image"], str):
            raise DataError(f"retrieval row {r.get('line', '?')} needs one 'image' path, not a list")
        i = images.setdefault(r["image"], len(images))
        for caption in _captions(r):
            texts.append(caption)
            owner.append(i)
    return list(images), texts, torch.tensor(owner, dtype=torch.long)


def _per_group(keys: list[str], scores: list[float]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = {}
    for k, s in zip(keys, scores):
        groups.setdefault(k, []).append(s)
    return {k: {"n": len(v), "score": sum(v) / len(v)} for k, v in groups.items()}


def _report(task: str, tt, metrics: dict, groups: dict, examples: list[dict], t0: float) -> EvalReport:
    return EvalReport(task=task, metrics=metrics, by_subtask=groups, examples=examples,
                      seconds=time.perf_counter() - t0, model=str(tt.folder) if tt.folder else None)


def evaluate_zeroshot(tt, rows: Sequence[dict], labels: Sequence[str] | None = None,
                      templates: Sequence[str] = ("a photo of a {}.",)) -> EvalReport:
    """Zero-shot accuracy of `tt` (a `TwoTower`) over manifest rows (see the module docstring)."""
    t0 = time.perf_counter()
    names, truth = zeroshot_labels(rows, labels)
    image_embeds = tt.embed_images([r["image"] for r in rows])  # [I, E]
    weights = tt.class_embeddings(names, templates)  # [C, E]
    acc = zeroshot_accuracy(image_embeds, weights, truth, ks=(1, 5))
    probs = tt.probabilities(tt.logits(image_embeds, weights))  # [I, C]
    best = probs.argmax(-1)
    hits = [float(p == t) for p, t in zip(best.tolist(), truth.tolist())]
    examples = [{"index": i, "image": r["image"], "line": r.get("line"), "label": names[t],
                 "prediction": names[p], "probability": float(probs[i, p]), "score": h}
                for i, (r, t, p, h) in enumerate(zip(rows, truth.tolist(), best.tolist(), hits))]
    metrics = {"top1": acc[1], "top5": acc[5]}
    return _report("zeroshot", tt, metrics, _per_group([names[t] for t in truth.tolist()], hits), examples, t0)


def evaluate_retrieval(tt, rows: Sequence[dict]) -> EvalReport:
    """Image<->text recall@1/5/10 of `tt` over manifest rows (see the module docstring)."""
    t0 = time.perf_counter()
    images, texts, owner = retrieval_pairs(rows)
    image_embeds, text_embeds = tt.embed_images(images), tt.embed_texts(texts)  # [I, E], [T, E]
    r = retrieval_recall_from_embeddings(image_embeds, text_embeds, owner, ks=(1, 5, 10))
    metrics = {f"i2t_r{k}": r.image_to_text[k] for k in (1, 5, 10)}
    metrics |= {f"t2i_r{k}": r.text_to_image[k] for k in (1, 5, 10)}
    top = (text_embeds @ image_embeds.T).argmax(-1)  # [T], best image per caption
    hits = [float(t == o) for t, o in zip(top.tolist(), owner.tolist())]
    examples = [{"index": i, "text": text, "image": images[o], "prediction": images[t], "score": h}
                for i, (text, o, t, h) in enumerate(zip(texts, owner.tolist(), top.tolist(), hits))]
    return _report("retrieval", tt, metrics, _per_group(["captions"] * len(hits), hits), examples, t0)
