"""Evaluation of the objectives experiment's CoCa models: zero-shot, retrieval, CIDEr-D.

Axes: I images, C candidate texts (classes x templates), M = I * C scored pairs, T tokens.

Two ways to score an (image, text) pair:
- "embedding": cosine similarity of the contrastive image and text embeddings (CLIP-style); used
  for the contrastive-only model and for CoCa.
- "likelihood": log p(text | image) under the captioning decoder, summed over the caption's
  tokens including <eos> (`caption_log_likelihood`); used for the captioning-only model, whose
  contrastive heads are untrained. Zero-shot picks argmax_c log p(prompt_c | image) (with several
  templates, log of the mean probability over them, i.e. the template is marginalised);
  retrieval ranks images (or texts) by the same pair scores. The sum, not the per-token mean:
  the classifier compares whole-prompt probabilities; classes with longer names ("ankle boot")
  are not favoured by a per-token average.
"""

from __future__ import annotations

import math

import torch

from vlmkit.data.processors.two_tower import TwoTowerImageProcessor
from vlmkit.data.tokenizer import Tokenizer
from vlmkit.eval.retrieval import retrieval_recall, retrieval_recall_from_embeddings
from vlmkit.eval.text_metrics import cider_d
from vlmkit.experiments.objectives_data import ZeroShotSet
from vlmkit.generation.coca import generate_caption
from vlmkit.generation.sampling import SamplingConfig
from vlmkit.models.coca.model import CoCa
from vlmkit.training.contrastive import tokenize_captions
from vlmkit.training.recipes.contrastive import ImageTextPairs

BATCH = 128


def _pixels(model: CoCa, images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, h, w] -> float32 [B, 3, S, S], as training's batches and inference make them."""
    return TwoTowerImageProcessor.for_model(model).normalize(images)


@torch.no_grad()
def image_features(model: CoCa, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [I, 3, S, S] -> (normalised embeddings [I, E], caption tokens [I, n, W])."""
    embs, caps = [], []
    for i in range(0, len(images), BATCH):
        e, c = model.encode_image_all(_pixels(model, images[i:i + BATCH]))
        embs.append(e.float())
        caps.append(c)
    return torch.cat(embs), torch.cat(caps)


@torch.no_grad()
def text_embeddings(model: CoCa, tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    """C texts -> normalised text embeddings [C, E]."""
    out = []
    for i in range(0, len(texts), BATCH):
        ids, mask = tokenize_captions(tok, texts[i:i + BATCH], model)
        out.append(model.encode_text(ids, mask).float())
    return torch.cat(out)


@torch.no_grad()
def caption_log_likelihood(model: CoCa, caption_tokens: torch.Tensor, ids: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
    """log p(text | image) of M pairs: caption tokens [M, n, W], ids / mask [M, T] (<bos> text
    <eos>, right-padded) -> float32 [M], summed over the predicted tokens (all but <bos>)."""
    dummy = caption_tokens.new_zeros(len(ids), 1)  # the image embedding is not needed here
    logits = model.forward_text(dummy, caption_tokens, ids, mask).logits[:, :-1].float()  # [M, T-1, V]
    logp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]  # [M, T-1]
    return (logp * mask[:, 1:]).sum(1)


@torch.no_grad()
def likelihood_matrix(model: CoCa, tok: Tokenizer, caption_tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Scores [I, C]: log p(texts[c] | image i) for every image and text."""
    ids, mask = tokenize_captions(tok, texts, model)  # [C, T]
    C = len(texts)
    per_chunk = max(1, 2048 // C)  # images per forward, ~2k pairs at a time
    rows = []
    for i in range(0, len(caption_tokens), per_chunk):
        cap = caption_tokens[i:i + per_chunk]  # [c, n, W]
        c = len(cap)
        pairs = cap[:, None].expand(-1, C, -1, -1).reshape(c * C, *cap.shape[1:])  # [c*C, n, W]
        scores = caption_log_likelihood(model, pairs, ids.repeat(c, 1), mask.repeat(c, 1))
        rows.append(scores.view(c, C))  # [c, C]
    return torch.cat(rows)


def zero_shot_top1(model: CoCa, tok: Tokenizer, zs: ZeroShotSet, mode: str) -> float:
    """Top-1 accuracy of `zs` with prompts scored by `mode` ("embedding" / "likelihood")."""
    texts = [t.format(name) for name in zs.class_names for t in zs.templates]  # class-major
    P = len(zs.templates)
    img, caps = image_features(model, zs.images)
    if mode == "embedding":
        txt = text_embeddings(model, tok, texts).view(len(zs.class_names), P, -1)  # [C, P, E]
        weights = torch.nn.functional.normalize(txt.mean(1), dim=-1)  # prompt ensemble (CLIP)
        scores = img @ weights.T  # [I, C]
    else:
        logp = likelihood_matrix(model, tok, caps, texts).view(len(img), -1, P)  # [I, C, P]
        scores = logp.logsumexp(-1) - math.log(P)
    return float((scores.argmax(1) == zs.labels).float().mean())


def retrieval_r1(model: CoCa, tok: Tokenizer, pairs: ImageTextPairs, mode: str) -> tuple[float, float]:
    """(image->text R@1, text->image R@1) over pairs with distinct captions."""
    img, caps = image_features(model, pairs.images)
    target = torch.arange(len(pairs))
    if mode == "embedding":
        r = retrieval_recall_from_embeddings(img, text_embeddings(model, tok, pairs.texts), target, ks=(1,))
    else:
        r = retrieval_recall(likelihood_matrix(model, tok, caps, pairs.texts), target, ks=(1,))
    return r.image_to_text[1], r.text_to_image[1]


@torch.no_grad()
def caption_cider(model: CoCa, tok: Tokenizer, pairs: ImageTextPairs) -> tuple[float, list[str]]:
    """CIDEr-D of greedy captions against the single reference caption; also the captions."""
    sampling = SamplingConfig(max_new_tokens=model.cfg.context_length - 1)
    preds = []
    for i in range(0, len(pairs), BATCH):
        ids = generate_caption(model, _pixels(model, pairs.images[i:i + BATCH]), sampling)
        preds += [tok.decode([t for t in row.tolist() if t != model.cfg.pad_token_id]).strip() for row in ids]
    return cider_d(preds, [[t] for t in pairs.texts]).corpus, preds
