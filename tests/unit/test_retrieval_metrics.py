"""Tests for vlmkit.eval.retrieval on constructed similarities/embeddings with known answers."""

import pytest
import torch
import torch.nn.functional as F

from vlmkit.errors import DataError
from vlmkit.eval.retrieval import (
    build_zeroshot_classifier,
    retrieval_recall,
    retrieval_recall_from_embeddings,
    zeroshot_accuracy,
    zeroshot_weights,
)


def _literal_recall(sim: list[list[float]], owner: list[int], k: int) -> tuple[float, float]:
    """Recall@k by definition, with explicit loops; ties count against the right answer."""
    num_images, num_texts = len(sim), len(owner)
    found_images = 0
    for i in range(num_images):
        best = max(sim[i][j] for j in range(num_texts) if owner[j] == i)
        beaten_by = sum(1 for j in range(num_texts) if owner[j] != i and sim[i][j] >= best)
        found_images += beaten_by < k
    found_texts = 0
    for j in range(num_texts):
        right = sim[owner[j]][j]
        beaten_by = sum(1 for i in range(num_images) if i != owner[j] and sim[i][j] >= right)
        found_texts += beaten_by < k
    return found_images / num_images, found_texts / num_texts


def test_retrieval_recall_small_known_case():
    # 3 images, 2 captions each (texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2).
    sim = torch.tensor([
        [0.9, 0.1, 0.8, 0.2, 0.0, 0.0],  # image 0: best own caption (0.9) is ranked first
        [0.5, 0.6, 0.3, 0.4, 0.7, 0.0],  # image 1: best own (0.4) is beaten by 0.5, 0.6, 0.7
        [0.0, 0.0, 0.0, 0.0, 0.1, 0.9],  # image 2: own caption 5 ranks first
    ])
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    result = retrieval_recall(sim, owner, ks=(1, 3, 4))
    assert result.image_to_text == {1: pytest.approx(2 / 3), 3: pytest.approx(2 / 3), 4: 1.0}
    # Text ranks (how many other images score >= the caption's own image):
    # t0: 0 | t1: 1 (image 1 has 0.6) | t2: 1 (0.8 >= 0.3) | t3: 0 | t4: 1 (0.7) | t5: 0
    assert result.text_to_image == {1: pytest.approx(3 / 6), 3: 1.0, 4: 1.0}


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_retrieval_recall_matches_literal_definition_with_ties(chunk_size):
    g = torch.Generator().manual_seed(0)
    num_images, num_texts = 9, 30
    owner = torch.cat([torch.arange(num_images), torch.randint(0, num_images, (21,), generator=g)])
    sim = torch.randint(0, 5, (num_images, num_texts), generator=g).float()  # many ties
    ks = (1, 2, 5, 10)
    result = retrieval_recall(sim, owner, ks=ks, chunk_size=chunk_size)
    for k in ks:
        i2t, t2i = _literal_recall(sim.tolist(), owner.tolist(), k)
        assert result.image_to_text[k] == pytest.approx(i2t)
        assert result.text_to_image[k] == pytest.approx(t2i)


def test_retrieval_collapsed_model_scores_zero():
    owner = torch.tensor([0, 1, 2, 3])
    result = retrieval_recall(torch.ones(4, 4), owner, ks=(1, 4))
    assert result.image_to_text == {1: 0.0, 4: 1.0}
    assert result.text_to_image == {1: 0.0, 4: 1.0}
    nan_sim = torch.eye(4)
    nan_sim[0, 0] = float("nan")
    assert retrieval_recall(nan_sim, owner, ks=(1,)).image_to_text[1] == pytest.approx(3 / 4)


def test_retrieval_from_embeddings_known_answers():
    d = 8
    images = torch.eye(d)[:4] * torch.tensor([[1.0], [5.0], [0.2], [3.0]])  # norms must not matter
    # Captions: two per image near its axis (off-axis parts in dims 4..7, which no image uses),
    # but caption 7 (of image 3) points at image 2 and only a little at image 3.
    texts = torch.eye(d)[[0, 0, 1, 1, 2, 2, 3, 2]] + 0.1 * torch.eye(d)[[4, 5, 6, 7] * 2]
    texts[7, 3] = 0.3
    owner = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    result = retrieval_recall_from_embeddings(images, texts, owner, ks=(1, 2))
    assert result.image_to_text == {1: 1.0, 2: 1.0}  # image 3 still has caption 6 on top
    assert result.text_to_image[1] == pytest.approx(7 / 8)  # caption 7 retrieves image 2 first
    assert result.text_to_image[2] == 1.0


def test_retrieval_rejects_bad_input():
    with pytest.raises(DataError, match="image 2 has no caption"):
        retrieval_recall(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        retrieval_recall(torch.zeros(2, 2), torch.tensor([0, 5]))
    with pytest.raises(DataError, match="K >= 1"):
        retrieval_recall(torch.zeros(1, 1), torch.tensor([0]), ks=(0,))


def test_zeroshot_weights_normalise_each_prompt_before_averaging():
    e = torch.eye(3)
    # Class 0: prompt embeddings 10*e0 and e1 -> equal weight -> (e0 + e1) / sqrt(2).
    text = torch.stack([torch.stack([10 * e[0], e[1]]), torch.stack([e[2], e[2] * 3])])  # (2, 2, 3)
    weights = zeroshot_weights(text)
    torch.testing.assert_close(weights[0], torch.tensor([1.0, 1.0, 0.0]) / 2**0.5)
    torch.testing.assert_close(weights[1], e[2])


def test_zeroshot_accuracy_top1_top5():
    num_classes, d = 7, 7
    weights = torch.eye(num_classes, d)
    # Image n prefers classes in the order given by `prefs[n]` (first = top-1).
    prefs = [[0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 0],
             [2, 0, 1, 3, 4, 5, 6], [5, 4, 3, 2, 1, 0, 6]]
    images = torch.zeros(4, d)
    for n, order in enumerate(prefs):
        for rank, c in enumerate(order):
            images[n, c] = 10.0 - rank
    labels = torch.tensor([0, 0, 0, 6])  # ranks of the true class: 0, 6, 1, 6
    acc = zeroshot_accuracy(images, weights, labels, ks=(1, 2, 5, 7))
    assert acc == {1: 0.25, 2: 0.5, 5: 0.5, 7: 1.0}
    tied = zeroshot_accuracy(torch.ones(2, d), weights, torch.tensor([0, 3]), ks=(1,))
    assert tied == {1: 0.0}


def test_build_zeroshot_classifier_prompt_ensembling():
    calls = []

    def encode_text(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        # A deterministic fake text tower: character histograms over a small alphabet.
        rows = [[t.count(ch) + 0.5 for ch in "abcdefgho "] for t in texts]
        return torch.tensor(rows)

    templates = ["a photo of a {}.", "a blurry {}"]
    weights = build_zeroshot_classifier(["cat", "dog"], templates, encode_text)
    assert calls == [["a photo of a cat.", "a blurry cat"], ["a photo of a dog.", "a blurry dog"]]
    expected = torch.stack([F.normalize(encode_text(c), dim=-1).mean(0) for c in calls[:2]])
    torch.testing.assert_close(weights, F.normalize(expected, dim=-1))
    with pytest.raises(DataError, match="placeholder"):
        build_zeroshot_classifier(["cat"], ["no slot"], encode_text)
