"""Contrastive image-text losses: CLIP's softmax InfoNCE and SigLIP's pairwise sigmoid loss.

Papers: Radford et al. 2021 (CLIP), Zhai et al. 2023 "Sigmoid Loss for Language Image
Pre-Training" (SigLIP; big_vision `sigmoid_loss`).

Axis legend: B local batch (one process), W world size, N = W * B global batch, D embedding dim.

Conventions (as in open_clip and big_vision):
- `img_emb`, `txt_emb` are (B, D) L2-normalised embeddings; the model normalises, the loss does not.
- `logit_scale` is the multiplier t on cosine similarities, already exponentiated
  (pass `model.logit_scale.exp()`), a float or a one-element tensor; `logit_bias` is SigLIP's b.
- The loss is computed in the embeddings' dtype; cast them to float32 first for bf16 training.

Distributed training: every process passes its local batch (all the same size B) and gets back its
local share of the loss, such that the mean over ranks equals the full-batch loss over N pairs.
The gradient that reaches each rank's embeddings is d(sum over ranks of their losses)/d(local
embeddings), and the one reaching `logit_scale`/`logit_bias` is that of the local loss only; DDP's
averaging of parameter gradients turns both into exactly the full-batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _check_embeddings(img_emb: torch.Tensor, txt_emb: torch.Tensor) -> None:
    if img_emb.ndim != 2 or img_emb.shape != txt_emb.shape:
        raise ValueError(
            f"need (B, D) image and text embeddings of equal shape, got {tuple(img_emb.shape)} "
            f"and {tuple(txt_emb.shape)}"
        )


def _as_scalar(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """`value` as a 0-dim tensor with `like`'s dtype/device, keeping its autograd history."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"logit scale/bias must have one element, got {tuple(value.shape)}")
        return value.to(dtype=like.dtype, device=like.device).reshape(())
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _pair_signs(size: int, positives_on_diagonal: bool, like: torch.Tensor) -> torch.Tensor:
    """(size, size) SigLIP labels: +1 for matching pairs (the diagonal), -1 for all others."""
    signs = -torch.ones(size, size, dtype=like.dtype, device=like.device)
    if positives_on_diagonal:
        signs.diagonal().fill_(1.0)
    return signs


# ---------------------------------------------------------------------------------------------
# Single-process losses
# ---------------------------------------------------------------------------------------------


def clip_loss(
    img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image->text and text->image cross-entropy over the batch.

    Args:
        img_emb, txt_emb: (B, D) normalised embeddings; pair i is (img_emb[i], txt_emb[i]).
        logit_scale: temperature multiplier t (already exponentiated).
    Returns:
        0-dim loss, (CE(t * I T^T, diag) + CE(t * T I^T, diag)) / 2 with CE averaged over rows.
    """
    _check_embeddings(img_emb, txt_emb)
    t = _as_scalar(logit_scale, img_emb)
    logits = t * img_emb @ txt_emb.T  # (B, B): row i = image i against every text
    labels = torch.arange(len(img_emb), device=img_emb.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def siglip_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """SigLIP loss: -sum_ij log sigmoid(z_ij * (t * <img_i, txt_j> + b)) / B.

    z_ij = +1 for matching pairs (i == j) and -1 for every other pair; the sum runs over all B * B
    pairs and is divided by the batch size B (not by B * B), as in the paper and big_vision.

    Args:
        img_emb, txt_emb: (B, D) normalised embeddings.
        logit_scale: t (already exponentiated); logit_bias: b.
    Returns:
        0-dim loss.
    """
    _check_embeddings(img_emb, txt_emb)
    t, b = _as_scalar(logit_scale, img_emb), _as_scalar(logit_bias, img_emb)
    logits = t * img_emb @ txt_emb.T + b  # (B, B)
    signs = _pair_signs(len(img_emb), True, logits)
    return -F.logsigmoid(signs * logits).sum() / len(img_emb)


# ---------------------------------------------------------------------------------------------
# Communication helpers
# ---------------------------------------------------------------------------------------------


def _all_gather_single(out: torch.Tensor, x: torch.Tensor, group) -> None:
    # torch >= 2.10 renames all_gather_into_tensor (deprecated there) to all_gather_single.
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, x, group=group)


def _reduce_scatter_single(out: torch.Tensor, x: torch.Tensor, group) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, x, op=dist.ReduceOp.SUM, group=group)


@torch.no_grad()
def all_gather_detached(x: torch.Tensor, group=None) -> torch.Tensor:
    """(B, ...) on each rank -> (W * B, ...) in rank order, no gradient; bool tensors go through
    uint8 (not every backend gathers bool)."""
    src = x.to(torch.uint8) if x.dtype == torch.bool else x
    out = src.new_empty((dist.get_world_size(group) * src.shape[0], *src.shape[1:]))  # (W * B, ...)
    _all_gather_single(out, src.contiguous(), group)
    return out.bool() if x.dtype == torch.bool else out


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (B, ...) tensor into (W * B, ...), with a gradient.

    Backward: every rank's loss used every chunk, so the gradient of rank r's chunk is the sum
    over ranks of their gradients for it -- a reduce-scatter (SUM) of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return all_gather_detached(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        world = dist.get_world_size(ctx.group)
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))  # (B, ...)
        _reduce_scatter_single(out, grad.contiguous(), ctx.group)
        return out, None


def all_gather_with_grad(x: torch.Tensor, group=None) -> torch.Tensor:
    """(B, ...) on each rank -> (W * B, ...) in rank order; differentiable (see module doc)."""
    return _AllGatherWithGrad.apply(x, group)


def _ring_shift(tensors: list[torch.Tensor], group) -> tuple[list[torch.Tensor], list]:
    """Start sending `tensors` to the next rank and receiving same-shaped ones from the previous.

    Returns the receive buffers and the pending work handles; wait on all handles before reading.
    """
    group = group if group is not None else dist.group.WORLD
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    send_to = dist.get_global_rank(group, (rank + 1) % world)
    recv_from = dist.get_global_rank(group, (rank - 1) % world)
    received = [torch.empty_like(x) for x in tensors]
    ops = [dist.P2POp(dist.isend, x.contiguous(), send_to, group) for x in tensors]
    ops += [dist.P2POp(dist.irecv, y, recv_from, group) for y in received]
    return received, dist.batch_isend_irecv(ops)


def _wait(works: list) -> None:
    for work in works:
        work.wait()


# ---------------------------------------------------------------------------------------------
# Distributed losses
# ---------------------------------------------------------------------------------------------


def clip_loss_distributed(
    img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor | float, *, group=None
) -> torch.Tensor:
    """CLIP loss over the global batch, computed as this rank's share ("local loss").

    Local images are scored against all N texts and local texts against all N images: (B, N)
    logits instead of (N, N) per rank. Returns the local mean of the two cross-entropies; the mean
    over ranks is `clip_loss` of the concatenated batch. Needs equal B on every rank.
    """
    _check_embeddings(img_emb, txt_emb)
    rank = dist.get_rank(group)
    all_img = all_gather_with_grad(img_emb, group)  # (N, D)
    all_txt = all_gather_with_grad(txt_emb, group)  # (N, D)
    t = _as_scalar(logit_scale, img_emb)
    logits_img = t * img_emb @ all_txt.T  # (B, N): local images against every text
    logits_txt = t * txt_emb @ all_img.T  # (B, N): local texts against every image
    labels = torch.arange(len(img_emb), device=img_emb.device) + rank * len(img_emb)
    return 0.5 * (F.cross_entropy(logits_img, labels) + F.cross_entropy(logits_txt, labels))


def _siglip_chunk_grads(img, held, t, b, positives: bool, scale: torch.Tensor):
    """Gradients of scale * sum_ij -log sigmoid(z_ij (t <img_i, held_j> + b)) for one text chunk.

    Returns (d img (B, D), d held (B, D), d t (), d b ()).
    """
    sims = img @ held.T  # (B, B)
    signs = _pair_signs(len(img), positives, sims)
    # d/dx of -log sigmoid(z x) is -z * sigmoid(-z x).
    g = -signs * torch.sigmoid(-signs * (t * sims + b)) * scale  # (B, B) dloss/dlogits
    return t * (g @ held), t * (g.T @ img), (g * sims).sum(), g.sum()


class _SigLipRingLoss(torch.autograd.Function):
    """SigLIP loss of local images against all texts, passing text chunks around a ring.

    Step k (k = 0..W-1) scores the local images against the text chunk of rank (r - k) mod W
    (positives only at k = 0), then hands that chunk to rank r + 1. Only the local inputs are
    saved; backward runs the ring again, carrying each chunk's gradient along with the chunk so
    that after W steps it arrives back at its owner. Memory per rank is O(B * D + B * B),
    independent of W, at the cost of recomputing the (B, B) logits in backward.
    """

    @staticmethod
    def forward(ctx, img, txt, t, b, group):
        ctx.save_for_backward(img, txt, t, b)
        ctx.group = group
        world = dist.get_world_size(group)
        loss = img.new_zeros(())
        held = txt
        for step in range(world):
            # Start passing the chunk on before using it, so communication overlaps the matmul.
            incoming, works = _ring_shift([held], group) if step < world - 1 else ([held], [])
            logits = t * img @ held.T + b  # (B, B)
            signs = _pair_signs(len(img), step == 0, logits)
            loss = loss - F.logsigmoid(signs * logits).sum()
            _wait(works)
            held = incoming[0]
        return loss / len(img)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        img, txt, t, b = ctx.saved_tensors
        world = dist.get_world_size(ctx.group)
        scale = grad_loss / len(img)
        grad_img, grad_t, grad_b = torch.zeros_like(img), t.new_zeros(()), b.new_zeros(())
        held, held_grad = txt, torch.zeros_like(txt)
        for step in range(world):
            d_img, d_held, d_t, d_b = _siglip_chunk_grads(img, held, t, b, step == 0, scale)
            grad_img += d_img
            held_grad = held_grad + d_held
            grad_t, grad_b = grad_t + d_t, grad_b + d_b
            if world == 1:
                break
            # The chunk now held belongs to rank r - step; after the last step it belongs to
            # r + 1, so one more shift of its gradient delivers it to the owner.
            if step < world - 1:
                (held, held_grad), works = _ring_shift([held, held_grad], ctx.group)
            else:
                (held_grad,), works = _ring_shift([held_grad], ctx.group)
            _wait(works)
        needs = ctx.needs_input_grad
        return (grad_img if needs[0] else None, held_grad if needs[1] else None,
                grad_t if needs[2] else None, grad_b if needs[3] else None, None)


def siglip_loss_distributed(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    *,
    group=None,
) -> torch.Tensor:
    """SigLIP loss over the global batch with the paper's chunked ("ring") implementation.

    Text embeddings travel between neighbouring ranks (send/recv); no rank ever holds more than
    one foreign text chunk. Returns sum_{i local, all j} -log sigmoid(z_ij logit_ij) / B; the mean
    over ranks is `siglip_loss` of the concatenated batch. Needs equal B on every rank.
    """
    _check_embeddings(img_emb, txt_emb)
    t, b = _as_scalar(logit_scale, img_emb), _as_scalar(logit_bias, img_emb)
    return _SigLipRingLoss.apply(img_emb, txt_emb, t, b, group)


def _use_distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


class ClipLoss(nn.Module):
    """CLIP loss; uses `clip_loss_distributed` when a process group with > 1 rank is initialised.

    forward(img_emb (B, D), txt_emb (B, D), logit_scale) -> 0-dim loss (the local share when
    distributed; see the module docstring).
    """

    def __init__(self, *, group=None) -> None:
        super().__init__()
        self.group = group

    def forward(self, img_emb, txt_emb, logit_scale):
        if _use_distributed(self.group):
            return clip_loss_distributed(img_emb, txt_emb, logit_scale, group=self.group)
        return clip_loss(img_emb, txt_emb, logit_scale)


class SigLipLoss(nn.Module):
    """SigLIP loss; uses the ring `siglip_loss_distributed` when a process group with > 1 rank
    is initialised.

    forward(img_emb (B, D), txt_emb (B, D), logit_scale, logit_bias) -> 0-dim loss.
    """

    def __init__(self, *, group=None) -> None:
        super().__init__()
        self.group = group

    def forward(self, img_emb, txt_emb, logit_scale, logit_bias):
        if _use_distributed(self.group):
            return siglip_loss_distributed(
                img_emb, txt_emb, logit_scale, logit_bias, group=self.group
            )
        return siglip_loss(img_emb, txt_emb, logit_scale, logit_bias)


# --------------------------------------------------------------------------- image-text models


def contrastive_loss(
    kind: str,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
    group=None,
) -> torch.Tensor:
    """The `kind` ("sigmoid" / "softmax") loss of paired [B, E] embeddings, a 0-dim tensor.

    `logit_scale` is the model's log-temperature t' (exponentiated here). Delegates to
    `SigLipLoss` / `ClipLoss`, which switch to their distributed forms when a process group with
    more than one rank is initialised.
    """
    if kind == "sigmoid":
        if logit_bias is None:
            raise ValueError("the sigmoid loss needs a logit bias")
        return SigLipLoss(group=group)(image_embeds, text_embeds, logit_scale.exp(), logit_bias)
    return ClipLoss(group=group)(image_embeds, text_embeds, logit_scale.exp())


def caption_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Next-token cross-entropy (float32, mean over real tokens) of caption logits [B, T, V] for
    right-padded captions input_ids [B, T]: position t predicts token t+1."""
    targets = input_ids[:, 1:]  # [B, T-1]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


@dataclass
class ImageTextLoss:
    """total = w_con * contrastive + w_cap * caption * caption_scale (0-dim); caption is None for
    models without a captioning term (or with its weight 0)."""

    total: torch.Tensor
    contrastive: torch.Tensor
    caption: torch.Tensor | None


def image_text_loss(model, image_embeds, text_embeds, caption_logits=None, input_ids=None, attention_mask=None,
                    *, group=None, caption_scale: float = 1.0) -> ImageTextLoss:
    """The loss of an image-text model (two-tower or CoCa) on a batch of matching pairs.

    The model supplies `cfg.contrastive_loss`, `logit_scale`, `logit_bias` and `loss_weights`
    ({"contrastive": w, "caption": w}, a missing term weighs 0). Embeddings [B, E] normalised
    (pass float32 copies under autocast); caption_logits [B, T, V] with input_ids /
    attention_mask [B, T] when the caption weight is > 0.
    """
    weights = model.loss_weights
    con = contrastive_loss(model.cfg.contrastive_loss, image_embeds, text_embeds, model.logit_scale,
                           model.logit_bias, group)
    if not weights.get("caption"):
        return ImageTextLoss(weights["contrastive"] * con, con, None)
    cap = caption_loss(caption_logits, input_ids, attention_mask)
    return ImageTextLoss(weights["contrastive"] * con + weights["caption"] * cap * caption_scale, con, cap)
