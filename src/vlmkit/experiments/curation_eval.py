"""Scoring of the curation experiment: the SigLIP models' zero-shot and retrieval, and each curate
rule's precision and recall against the recorded corruptions.

Axes: I images, C classes, P prompt templates, E embedding width.

Per rule (rules run in a chain, so a rule only sees the rows earlier rules kept):
- removed: rows the rule removed, and how many of each kind (clean, swapped, ...);
- precision: the share of its removals that carry the corruption it targets (`TARGETS`);
- recall: the share of ALL rows with that corruption in the raw pool that it removed (rows an
  earlier rule already removed count as missed by this one, so recall is of the whole pool).
"""

from __future__ import annotations

import torch

from vlmkit.data.processors.two_tower import TwoTowerImageProcessor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.eval.retrieval import build_zeroshot_classifier, retrieval_recall_from_embeddings, zeroshot_accuracy
from vlmkit.experiments.curation_data import KINDS
from vlmkit.experiments.objectives_data import ZeroShotSet
from vlmkit.experiments.plot import bar_panel, curve_panel, legend, new_canvas, save_png
from vlmkit.training.contrastive import tokenize_captions
from vlmkit.training.recipes.contrastive import ImageTextPairs

BATCH = 128
TARGETS = {"image_uniform": "blank", "ocr_caption": "printed", "clip_score": "swapped", "phash_dedup": "near_dup",
           "embed_dedup": "near_dup", "itm_score": "swapped"}


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """uint8 [I, 3, S, S] -> normalised image embeddings [I, E] (the training normalisation)."""
    proc = TwoTowerImageProcessor.for_model(model)
    return torch.cat([model.encode_image(proc.normalize(images[i:i + BATCH])).float()
                      for i in range(0, len(images), BATCH)])


@torch.no_grad()
def text_embeddings(model, tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """C texts -> normalised text embeddings [C, E]."""
    out = []
    for i in range(0, len(texts), BATCH):
        ids, mask = tokenize_captions(tok, texts[i:i + BATCH], model)
        out.append(model.encode_text(ids, mask).float())
    return torch.cat(out)


def zero_shot_top1(model, tok: Tokenizer, zs: ZeroShotSet) -> float:
    """Top-1 accuracy of CLIP-style zero-shot classification (prompt-ensembled class embeddings)."""
    weights = build_zeroshot_classifier(zs.class_names, zs.templates, lambda t: text_embeddings(model, tok, t))
    return zeroshot_accuracy(image_embeddings(model, zs.images), weights, zs.labels, ks=(1,))[1]


def retrieval_r1(model, tok: Tokenizer, pairs: ImageTextPairs) -> tuple[float, float]:
    """(image->text R@1, text->image R@1) over pairs with distinct captions."""
    img, txt = image_embeddings(model, pairs.images), text_embeddings(model, tok, pairs.texts)
    r = retrieval_recall_from_embeddings(img, txt, torch.arange(len(pairs)), ks=(1,))
    return r.image_to_text[1], r.text_to_image[1]


def rule_scores(removed_by: dict[str, list[int]], kinds: list[str]) -> dict[str, dict]:
    """Per rule: removed rows by kind, precision and recall against its target kind (module doc)."""
    totals = {k: kinds.count(k) for k in KINDS}
    out = {}
    for rule, rows in removed_by.items():
        by_kind = {k: 0 for k in KINDS}
        for i in rows:
            by_kind[kinds[i]] += 1
        target = TARGETS.get(rule)
        hit = by_kind.get(target, 0)
        out[rule] = {"removed": len(rows), "removed_by_kind": by_kind, "target": target,
                     "precision": hit / len(rows) if rows and target else None,
                     "recall": hit / totals[target] if target and totals[target] else None}
    return out


def kept_composition(kept_ids: list[int], kinds: list[str]) -> dict[str, int]:
    counts = {k: 0 for k in KINDS}
    for i in kept_ids:
        counts[kinds[i]] += 1
    return counts


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown_table(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def format_tables(arms: dict, rules: dict) -> str:
    """Arms table (pairs, zero-shot, R@1 both ways, train s) and rules table (precision/recall)."""
    arm_rows = [[name, str(a["pairs"]), _fmt(a["zs_unseen"]), _fmt(a["i2t_r1"]), _fmt(a["t2i_r1"]),
                 f"{a['train_s']:.0f}"] for name, a in arms.items()]
    arm_table = markdown_table(["arm", "pairs", "zs-unseen top-1", "R@1 i->t", "R@1 t->i", "train s"], arm_rows)
    rule_rows = [[name, str(r["removed"]), r["target"] or "-", _fmt(r["precision"]), _fmt(r["recall"]),
                  " ".join(f"{k}={v}" for k, v in r["removed_by_kind"].items() if v)] for name, r in rules.items()]
    rule_table = markdown_table(["rule", "removed", "target", "precision", "recall", "removed by kind"], rule_rows)
    return arm_table + "\n\n" + rule_table


def plot(arms: dict, rules: dict, path) -> object:
    """curation.png: metric bars per arm, rule precision/recall bars, and the loss curves."""
    image, d = new_canvas(1200, 520)
    keys = ("zs_unseen", "i2t_r1", "t2i_r1")
    bar_panel(d, (60, 40, 420, 460), "zero-shot unseen / R@1", ["zs-unseen", "R@1 i->t", "R@1 t->i"],
              {n: [a[k] for k in keys] for n, a in arms.items()}, 1.0)
    names = list(rules)
    bar_panel(d, (480, 40, 900, 460), "rule precision / recall", [n.replace("_", " ")[:12] for n in names],
              {"precision": [rules[n]["precision"] for n in names], "recall": [rules[n]["recall"] for n in names]}, 1.0)
    curve_panel(d, (960, 40, 1180, 300), "training loss", {n: a["losses"] for n, a in arms.items()})
    legend(d, (960, 340), [f"{a} / {m}" if m else a for a, m in zip(arms, ("precision", "recall", *[""] * len(arms)))])
    return save_png(image, path)
