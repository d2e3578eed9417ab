"""Image-text matching with hard negatives mined over the global batch (ALBEF, BLIP).

Axes: B pairs per rank, W ranks, N = W * B pairs in the global batch, M = 3B scored pairs per
rank, E embedding width.

`vlmkit.models.itm.itm_loss` mines negatives among the B pairs of one process. With data
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

from dataclasses import replace

import torch
import torch.distributed as dist

from vlmkit.models.coca.model import CoCa, CocaOutput
from vlmkit.models.itm import (
    ItmBatch,
    ItmHead,
    ItmResult,
    PairItmHead,
    ScoreFn,
    coca_scorer,
    draw_negatives,
    itm_loss,
    score_itm_batch,
    two_tower_scorer,
)
from vlmkit.training.losses import _use_distributed, all_gather_detached, all_gather_with_grad


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
