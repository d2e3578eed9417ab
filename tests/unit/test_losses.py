"""Tests for vlmkit.training.losses (single process): literal references, gradcheck, modules."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlmkit.training.losses import ClipLoss, SigLipLoss, clip_loss, siglip_loss


def _embeddings(batch: int, dim: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=-1)
    return img, txt


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _clip_literal(img: list[list[float]], txt: list[list[float]], t: float) -> float:
    """(1/2B) sum_i [-log softmax_j(t <I_i, T_j>)_i - log softmax_j(t <T_i, I_j>)_i]."""
    n = len(img)
    total = 0.0
    for i in range(n):
        row = [t * _dot(img[i], txt[j]) for j in range(n)]  # image i against every text
        col = [t * _dot(txt[i], img[j]) for j in range(n)]  # text i against every image
        total += -row[i] + math.log(sum(math.exp(x) for x in row))
        total += -col[i] + math.log(sum(math.exp(x) for x in col))
    return total / (2 * n)


def _siglip_literal(img: list[list[float]], txt: list[list[float]], t: float, b: float) -> float:
    """(1/B) sum_{i,j} log(1 + exp(-z_ij (t <I_i, T_j> + b))), z = +1 on the diagonal, else -1."""
    n = len(img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * (t * _dot(img[i], txt[j]) + b)))
    return total / n


def test_clip_loss_matches_literal_formula():
    img, txt = _embeddings(5, 4, seed=0)
    expected = _clip_literal(img.tolist(), txt.tolist(), 7.5)
    assert clip_loss(img, txt, 7.5).item() == pytest.approx(expected, rel=1e-12)
    assert clip_loss(img, txt, torch.tensor([7.5], dtype=torch.float64)).item() == pytest.approx(
        expected, rel=1e-12)


def test_siglip_loss_matches_literal_formula():
    img, txt = _embeddings(6, 3, seed=1)
    expected = _siglip_literal(img.tolist(), txt.tolist(), 10.0, -10.0)
    got = siglip_loss(img, txt, torch.tensor(10.0, dtype=torch.float64), -10.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_siglip_loss_normalisation_and_labels_on_tiny_case():
    # B = 2 with orthonormal embeddings: sims = identity. Diagonal logits t + b, off-diagonal b.
    img = txt = torch.eye(2, dtype=torch.float64)
    t, b = 2.0, -1.0
    per_pair_pos = math.log1p(math.exp(-(t + b)))  # -log sigmoid(+(t + b))
    per_pair_neg = math.log1p(math.exp(b))  # -log sigmoid(-b)
    expected = (2 * per_pair_pos + 2 * per_pair_neg) / 2  # sum over 4 pairs / B
    assert siglip_loss(img, txt, t, b).item() == pytest.approx(expected, rel=1e-12)


def test_gradcheck_float64():
    img, txt = _embeddings(4, 3, seed=3)
    img.requires_grad_(True)
    txt.requires_grad_(True)
    log_t = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c, s: clip_loss(a, c, s.exp()), (img, txt, log_t))
    assert torch.autograd.gradcheck(
        lambda a, c, s, d: siglip_loss(a, c, s.exp(), d), (img, txt, log_t, bias)
    )


def test_loss_prefers_matching_pairs():
    img, _ = _embeddings(6, 8, seed=4)
    shuffled = img[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert clip_loss(img, img, 10.0) < clip_loss(img, shuffled, 10.0)
    assert siglip_loss(img, img, 10.0, -5.0) < siglip_loss(img, shuffled, 10.0, -5.0)


def test_modules_use_single_process_path_without_process_group():
    img, txt = _embeddings(3, 4, seed=5)
    assert not torch.distributed.is_initialized()
    torch.testing.assert_close(ClipLoss()(img, txt, 3.0), clip_loss(img, txt, 3.0))
    torch.testing.assert_close(SigLipLoss()(img, txt, 3.0, 1.0), siglip_loss(img, txt, 3.0, 1.0))


def test_losses_reject_mismatched_shapes():
    img, txt = _embeddings(3, 4, seed=6)
    with pytest.raises(ValueError, match="equal shape"):
        clip_loss(img, txt[:2], 1.0)
    with pytest.raises(ValueError, match="one element"):
        siglip_loss(img, txt, torch.ones(2, dtype=torch.float64), 0.0)
