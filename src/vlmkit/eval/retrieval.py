"""Image-text retrieval recall@K and zero-shot classification accuracy from embeddings.

Axis legend: I images, T texts (captions), C classes, P prompt templates, D embedding dim.

Ranks are pessimistic about ties: a competitor that scores *equal* to the right answer counts as
ranked above it. So a collapsed model (all similarities equal) gets recall@1 = 0, not 1, and the
result does not depend on how `topk` happens to order ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlmkit.errors import DataError


@dataclass(frozen=True, kw_only=True)
class RetrievalRecall:
    """Recall@K in [0, 1] for each requested K.

    Attributes:
        image_to_text: K -> fraction of images with at least one of their captions in the top K.
        text_to_image: K -> fraction of captions whose image is in the top K.
    """

    image_to_text: dict[int, float]
    text_to_image: dict[int, float]


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(int(k) < 1 for k in ks):
        raise DataError(f"recall@K needs K >= 1, got {list(ks)}")


@torch.no_grad()
def retrieval_recall(
    similarity: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> RetrievalRecall:
    """Image<->text recall@K from a similarity matrix, with several captions per image allowed.

    Args:
        similarity: (I, T) float scores, higher = more similar (e.g. cosine similarities).
        text_to_image: (T,) int64, the image index in [0, I) each caption belongs to.
        ks: the K values to report.
        chunk_size: rows processed at once, bounding temporaries to (chunk_size, T).
    Image->text counts an image as found if its best-scoring caption is in the top K; every image
    must have at least one caption.
    """
    _check_ks(ks)
    num_images, num_texts = similarity.shape
    owner = torch.as_tensor(text_to_image, dtype=torch.long, device=similarity.device).reshape(-1)
    if len(owner) != num_texts:
        raise DataError(f"{num_texts} texts in the similarity matrix but {len(owner)} owners")
    if num_texts and (owner.min() < 0 or owner.max() >= num_images):
        raise DataError(f"text_to_image must hold image indices in [0, {num_images})")
    captions_per_image = torch.bincount(owner, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = int((captions_per_image == 0).nonzero()[0])
        raise DataError(f"image {missing} has no caption; image->text recall is undefined")

    # Similarity of each caption to its own image: (T,)
    positive = similarity[owner, torch.arange(num_texts, device=similarity.device)]
    image_rank = torch.empty(num_images, dtype=torch.long, device=similarity.device)
    text_rank = torch.zeros(num_texts, dtype=torch.long, device=similarity.device)
    for start in range(0, num_images, chunk_size):
        rows = similarity[start : start + chunk_size]  # (c, T)
        row_ids = torch.arange(start, start + len(rows), device=similarity.device)
        is_pos = owner[None, :] == row_ids[:, None]  # (c, T)
        best_pos = rows.masked_fill(~is_pos, float("-inf")).amax(dim=1)  # (c,)
        # Rank of the best caption = number of wrong captions scoring at least as high.
        rank = ((rows >= best_pos[:, None]) & ~is_pos).sum(1)
        image_rank[start : start + len(rows)] = rank.masked_fill(best_pos.isnan(), num_texts)
        # Rank of each caption's image = number of other images scoring at least as high.
        text_rank += ((rows >= positive[None, :]) & ~is_pos).sum(0)
    # A NaN score compares False with everything: count it as not found rather than as rank 0.
    text_rank.masked_fill_(positive.isnan(), num_images)
    return RetrievalRecall(
        image_to_text={int(k): (image_rank < k).double().mean().item() for k in ks},
        text_to_image={int(k): (text_rank < k).double().mean().item() for k in ks},
    )


@torch.no_grad()
def retrieval_recall_from_embeddings(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 5, 10),
) -> RetrievalRecall:
    """Recall@K from (I, D) image and (T, D) text embeddings, compared by cosine similarity."""
    if image_emb.shape[-1] != text_emb.shape[-1]:
        raise DataError(f"embedding dims differ: {image_emb.shape[-1]} vs {text_emb.shape[-1]}")
    # float32 at least: bf16 cosine similarities tie far too often for a fair ranking.
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    img = F.normalize(image_emb.to(dtype), dim=-1)
    txt = F.normalize(text_emb.to(dtype), dim=-1)
    return retrieval_recall(img @ txt.T, text_to_image, ks=ks)  # (I, T)


# ---------------------------------------------------------------------------------------------
# Zero-shot classification
# ---------------------------------------------------------------------------------------------


def zeroshot_weights(text_emb: torch.Tensor) -> torch.Tensor:
    """Prompt-ensembled class embeddings (CLIP paper, sec. 3.1.4).

    Args:
        text_emb: (C, P, D) embeddings of P prompt templates filled with each of C class names.
    Returns:
        (C, D) unit-norm class embeddings: each prompt embedding is L2-normalised, the P of a class
        are averaged, and the mean is normalised again (so every template weighs the same).
    """
    if text_emb.ndim != 3:
        shape = tuple(text_emb.shape)
        raise DataError(f"text embeddings must be (classes, templates, dim), got {shape}")
    return F.normalize(F.normalize(text_emb, dim=-1).mean(dim=1), dim=-1)


@torch.no_grad()
def build_zeroshot_classifier(
    class_names: Sequence[str],
    templates: Sequence[str],
    encode_text: Callable[[list[str]], torch.Tensor],
) -> torch.Tensor:
    """(C, D) zero-shot weights from class names and templates such as "a photo of a {}.".

    `encode_text` maps a list of strings to their (len, D) embeddings; it is called once per class
    with the P filled-in templates.
    """
    if not class_names or not templates:
        raise DataError("zero-shot classification needs at least one class name and one template")
    if any("{}" not in t for t in templates):
        raise DataError("every template needs a '{}' placeholder for the class name")
    per_class = [encode_text([t.format(name) for t in templates]) for name in class_names]
    return zeroshot_weights(torch.stack(per_class))  # (C, P, D) -> (C, D)


@torch.no_grad()
def zeroshot_accuracy(
    image_emb: torch.Tensor,
    class_weights: torch.Tensor,
    labels: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Top-K accuracy of zero-shot classification.

    Args:
        image_emb: (N, D) image embeddings (normalised here; the scale does not change rankings).
        class_weights: (C, D) class embeddings, e.g. from `zeroshot_weights`.
        labels: (N,) int64 true class indices in [0, C).
        ks: the K values to report (K >= C gives 1.0).
    Returns:
        K -> fraction of images whose true class is among the K highest-scoring classes.
    """
    _check_ks(ks)
    labels = torch.as_tensor(labels, dtype=torch.long, device=image_emb.device).reshape(-1)
    if len(labels) != len(image_emb):
        raise DataError(f"{len(image_emb)} images but {len(labels)} labels")
    num_classes = class_weights.shape[0]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must be class indices in [0, {num_classes})")
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    logits = F.normalize(image_emb.to(dtype), dim=-1) @ class_weights.to(dtype).T  # (N, C)
    true_logit = logits.gather(1, labels[:, None])  # (N, 1)
    others = logits.scatter(1, labels[:, None], float("-inf"))  # (N, C), true class masked out
    # Rank = number of other classes scoring at least as high as the true one; NaN is never right.
    rank = (others >= true_logit).sum(dim=1).masked_fill(true_logit[:, 0].isnan(), num_classes)
    return {int(k): (rank < k).double().mean().item() for k in ks}
