"""Image-text matching (ITM) with contrastive hard negatives, as in ALBEF (arXiv:2107.07651) and
BLIP (arXiv:2201.12086). Plain PyTorch, single device.

Axes: B batch of matching pairs, M = 3B scored pairs, E embedding width, W fused width.

ITM is binary classification of (image, text) pairs as match / no match (2-way logits, class 1 =
match). Each step scores the B positive pairs plus, for every image, one negative text and, for
every text, one negative image, drawn with probability softmax(similarity) over the non-positive
candidates: hard negatives (similar, yet wrong) are the informative ones.

Fused representations (what the classifier reads):
- CoCa: the multimodal decoder's output at the CLS position (`CoCa.fuse`): the CLS token has
  attended to the whole caption in the unimodal decoder, and the multimodal layers add
  cross-attention to the image, so it is a joint image-text feature. Use `ItmHead`.
- Two-tower models (SigLIP/CLIP) have no cross-modal layer, so `PairItmHead` fuses the two
  pooled embeddings itself: an MLP over [u, v, u * v, |u - v|] (the InferSent matching
  features; the product and difference expose agreement per dimension, which a linear layer on
  [u, v] alone cannot express).

Across processes, ALBEF/BLIP mine over the global batch: `vlmkit.training.itm` gathers the
candidates and uses the same sampler (`draw_negatives`) and batch layout (`ItmBatch.of`).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlmkit.errors import DataError
from vlmkit.models.coca.model import CoCa, CocaOutput
from vlmkit.models.common.mlp import gelu_tanh

# (image indices [M], text indices [M]) -> ITM logits [M, 2]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def positive_pairs(batch_size: int, group_ids: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """[B, B] bool, True where image i and text j match: the diagonal, or equal `group_ids`
    (e.g. an image id, when several captions of one image share a batch)."""
    if group_ids is None:
        return torch.eye(batch_size, dtype=torch.bool, device=device)
    return group_ids[:, None] == group_ids[None, :]


@torch.no_grad()
def draw_negatives(
    sim: torch.Tensor, positive: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One negative column per row of `sim` [R, C], drawn with probability softmax over the
    row's entries where `positive` [R, C] (bool) is False. Returns [R] int64 column indices."""
    if bool(positive.all(dim=1).any()):
        raise DataError("ITM needs a negative for every pair: a batch row matches every other row")
    scores = sim.detach().float().masked_fill(positive, float("-inf"))  # [R, C]
    return torch.multinomial(scores.softmax(dim=1), 1, generator=generator)[:, 0]


def sample_hard_negatives(
    sim: torch.Tensor, generator: torch.Generator | None = None, group_ids: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one negative text per image and one negative image per text.

    Args:
        sim: [B, B] image-to-text similarity (e.g. contrastive logits_per_image; a constant
            bias does not matter, the temperature does), pair i on the diagonal.
        generator: for reproducible draws (on sim's device).
        group_ids: optional [B] int; pairs with equal ids count as positives, never negatives.

    Returns:
        (text index for each image [B], image index for each text [B]), int64. A candidate j is
        drawn with probability softmax over the row's non-positive entries, so a positive is
        never drawn.
    """
    B = sim.shape[0]
    if sim.ndim != 2 or sim.shape[1] != B:
        raise ValueError(f"similarity must be square [B, B], got {tuple(sim.shape)}")
    pos = positive_pairs(B, group_ids, sim.device)
    return draw_negatives(sim, pos, generator), draw_negatives(sim.T, pos.T, generator)


@dataclass
class ItmBatch:
    """M = 3B scored pairs: B positives, then (image i, its negative text), then (text j's
    negative image, text j). labels [M] int64: 1 match, 0 no match."""

    image_index: torch.Tensor
    text_index: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def of(cls, pairs: torch.Tensor, neg_text: torch.Tensor, neg_image: torch.Tensor) -> "ItmBatch":
        """pairs [B]: index of each positive pair (its image and its text); neg_text, neg_image
        [B]: the drawn negatives of pair i's image and of pair i's text."""
        B = len(pairs)
        labels = torch.cat([torch.ones(B, dtype=torch.long, device=pairs.device), pairs.new_zeros(2 * B)])
        return cls(torch.cat([pairs, pairs, neg_image]), torch.cat([pairs, neg_text, pairs]), labels)


def build_itm_batch(
    sim: torch.Tensor, generator: torch.Generator | None = None, group_ids: torch.Tensor | None = None
) -> ItmBatch:
    """[B, B] similarity -> the ALBEF/BLIP batch of positives and mined negatives (see ItmBatch)."""
    neg_text, neg_image = sample_hard_negatives(sim, generator, group_ids)
    return ItmBatch.of(torch.arange(sim.shape[0], device=sim.device), neg_text, neg_image)


@dataclass
class ItmResult:
    """loss (0-dim, mean cross-entropy over M pairs), logits [M, 2], labels [M]; `accuracy`."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(-1) == self.labels).float().mean())


def itm_loss(
    score_fn: ScoreFn,
    sim: torch.Tensor,
    generator: torch.Generator | None = None,
    group_ids: torch.Tensor | None = None,
) -> ItmResult:
    """ITM loss of a batch of B matching pairs with similarity-mined hard negatives.

    Args:
        score_fn: (image indices [M], text indices [M]) -> logits [M, 2] of those pairs, e.g.
            `coca_scorer(...)` or `two_tower_scorer(...)`.
        sim: [B, B] contrastive similarity used for mining (no gradient flows through it).
        generator, group_ids: see `sample_hard_negatives`.
    """
    return score_itm_batch(score_fn, build_itm_batch(sim, generator, group_ids))


def score_itm_batch(score_fn: ScoreFn, batch: ItmBatch) -> ItmResult:
    """Score the M pairs of `batch` and take the mean cross-entropy against its labels."""
    logits = score_fn(batch.image_index, batch.text_index)  # [M, 2]
    # Classes are 1:2 (positive:negative), as in ALBEF/BLIP; we keep their unweighted loss.
    return ItmResult(F.cross_entropy(logits.float(), batch.labels), logits, batch.labels)


class ItmHead(nn.Module):
    """Linear 2-way classifier over a fused feature: [M, W] -> logits [M, 2] (class 1 = match)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.proj(fused)


class PairItmHead(nn.Module):
    """Two-tower ITM: MLP over [u, v, u * v, |u - v|] of image u [M, E] and text v [M, E] ->
    logits [M, 2]."""

    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(4 * embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, 2)

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        u, v = image_embeds, text_embeds
        features = torch.cat([u, v, u * v, (u - v).abs()], dim=-1)  # [M, 4E]
        return self.fc2(gelu_tanh(self.fc1(features)))


def two_tower_scorer(head: PairItmHead, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> ScoreFn:
    """Score re-paired rows of a two-tower batch's embeddings [B, E]."""
    return lambda i, t: head(image_embeds[i], text_embeds[t])


def coca_scorer(model: CoCa, head: ItmHead, out: CocaOutput) -> ScoreFn:
    """Score re-paired rows of a `CoCa` forward output (`CocaOutput`): image i's caption tokens
    with text t's unimodal states, through the multimodal decoder (`CoCa.fuse`)."""
    return lambda i, t: head(model.fuse(out.caption_tokens[i], out.text_states[t], out.text_mask[t]))
