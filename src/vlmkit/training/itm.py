"""Image-text matching with hard negatives mined over the global batch (ALBEF, BLIP).

Axes: B pairs per rank, W ranks, N = W * B pairs in the global batch, M = 3B scored pairs per
rank, E embedding width.

`itm_loss` mines negatives among the B pairs of one process (negatives drawn with probability
softmax(similarity) over the non-positive candidates, as in ALBEF/BLIP; the heads are in
`vlmkit.models.itm`). With data
parallelism ALBEF/BLIP mine among all N pairs: a harder negative is more likely to exist in a
bigger pool, and the pool should not shrink when the same global batch is split over more GPUs.
Here each rank:

1. gathers every rank's contrastive embeddings (no gradient: mining is a sampling step) and
   scores its local images against all N texts and its local texts against all N images
   ([B, N] similarities, like the "local loss" form of `clip_loss_distributed`);
2. draws one negative text per local image and one negative image per local text with
   `draw_negatives` (probability softmax over non-positive candidates; `group_ids` gathered too,
   so a second caption of the same image on another rank is never a negative);
3. scores its M = 3B pairs (global indices) on the gathered fused inputs, which are gathered
   *with* gradient: a negative drawn from rank r sends its gradient back to rank r.

Its loss is the mean over its M pairs, so the mean over ranks is the mean over all 3N pairs, and
DDP's gradient averaging gives that mean's gradient (the convention of `training.losses`). Every
rank must hold the same B. Use a different `generator` seed per rank, or all ranks draw alike.
Without an initialised process group (or with one process) this is `itm_loss` on the local batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlmkit.errors import DataError
from vlmkit.models.coca.model import CoCa, CocaOutput
from vlmkit.models.itm import ItmHead, PairItmHead
from vlmkit.training.losses import _use_distributed, all_gather_detached, all_gather_with_grad



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


def two_tower_scorer(head: PairItmHead, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> ScoreFn:
    """Score re-paired rows of a two-tower batch's embeddings [B, E]."""
    return lambda i, t: head(image_embeds[i], text_embeds[t])


def coca_scorer(model: CoCa, head: ItmHead, out: CocaOutput) -> ScoreFn:
    """Score re-paired rows of a `CoCa` forward output (`CocaOutput`): image i's caption tokens
    with text t's unimodal states, through the multimodal decoder (`CoCa.fuse`)."""
    return lambda i, t: head(model.fuse(out.caption_tokens[i], out.text_states[t], out.text_mask[t]))


def itm_loss_distributed(
    score_fn: ScoreFn,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    generator: torch.Generator | None = None,
    group_ids: torch.Tensor | None = None,
    *,
    group=None,
) -> ItmResult:
    """ITM loss of this rank's B pairs, negatives mined among all N pairs of the global batch.

    Args:
        score_fn: (global image indices [M], global text indices [M]) -> logits [M, 2], e.g.
            `two_tower_scorer_distributed` or `coca_scorer_distributed`.
        image_embeds, text_embeds: [B, E] local contrastive embeddings; mining uses
            scale * image @ text.T, as `itm_loss` uses the contrastive logits (no gradient).
        generator: for the draws; seed it differently on every rank.
        group_ids: optional [B] int, globally meaningful (e.g. image ids): equal ids anywhere in
            the global batch are positives, never negatives.
    """
    scale = scale.detach() if isinstance(scale, torch.Tensor) else scale
    img, txt = image_embeds.detach(), text_embeds.detach()
    if not _use_distributed(group):
        return itm_loss(score_fn, scale * img @ txt.T, generator, group_ids)
    B, rank = img.shape[0], dist.get_rank(group)
    all_img, all_txt = all_gather_detached(img, group), all_gather_detached(txt, group)  # [N, E]
    pairs = torch.arange(B, device=img.device) + rank * B  # global index of the local pairs
    ids = pairs if group_ids is None else group_ids  # without groups each pair is its own group
    positive = ids[:, None] == all_gather_detached(ids, group)[None, :]  # [B, N]
    neg_text = draw_negatives(scale * img @ all_txt.T, positive, generator)
    neg_image = draw_negatives(scale * txt @ all_img.T, positive, generator)
    return score_itm_batch(score_fn, ItmBatch.of(pairs, neg_text, neg_image))


def two_tower_scorer_distributed(
    head: PairItmHead, image_embeds: torch.Tensor, text_embeds: torch.Tensor, group=None
) -> ScoreFn:
    """Score global pairs of a two-tower batch: local embeddings [B, E] gathered with gradient."""
    if _use_distributed(group):
        image_embeds = all_gather_with_grad(image_embeds, group)  # [N, E]
        text_embeds = all_gather_with_grad(text_embeds, group)  # [N, E]
    return two_tower_scorer(head, image_embeds, text_embeds)


def coca_scorer_distributed(model: CoCa, head: ItmHead, out: CocaOutput, group=None) -> ScoreFn:
    """Score global pairs of a `CoCa` forward: every rank's caption tokens and unimodal text
    states are gathered with gradient (the attention mask without) and re-paired through the
    multimodal decoder (`CoCa.fuse`)."""
    if _use_distributed(group):  # only the fields coca_scorer reads are made global
        out = replace(out, caption_tokens=all_gather_with_grad(out.caption_tokens, group),  # [N, n, W]
                      text_states=all_gather_with_grad(out.text_states, group),  # [N, T+1, W]
                      text_mask=all_gather_detached(out.text_mask, group))  # [N, 1, T+1, T+1]
    return coca_scorer(model, head, out)
