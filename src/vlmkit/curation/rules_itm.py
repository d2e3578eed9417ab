"""`itm_score`: the image-text matching (ITM) probability of a checkpoint's ITM head.

Axes: B rows of a batch, E embedding width, W fused width.

The checkpoint is a vlmkit two-tower or CoCa folder exported by `vlmkit train-contrastive
--itm.weight W` (W > 0), which holds the ITM head beside the weights (``itm_head.safetensors`` and
``itm_head.json``, `vlmkit.training.itm_head`); a folder without it is a one-line error. The score
is softmax(logits)[match] of the (image, caption) pair:

- two-tower ("pair" head): the MLP over the two embeddings, which come from the same encoder (and
  the same per-row cache) as `clip_score`, so both rules on one folder encode each row once;
- CoCa ("multimodal" head): the linear head on the multimodal decoder's CLS state, one forward
  of the model on the row's image and caption.

Unlike the cosine, ITM was trained to say "these two do not belong together" on hard negatives
(similar, yet wrong captions), which is what a swapped caption is. Keep above `threshold` (a
probability, in [0, 1]) or the `top_fraction`, as `clip_score`; the top-fraction threshold is
fitted on the driver and shipped to the Ray workers like clip_score's (`fitted_state`), and
scoring is pure, so `--engine ray` gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmkit.curation.rules import chunks, register
from vlmkit.curation.rules_multimodal import ClipScore, ScoreConfig
from vlmkit.training.itm_head import load_itm_head, match_probability


@dataclass(kw_only=True, frozen=True)
class ItmScoreConfig(ScoreConfig):
    """As clip_score's: `model` (a folder with an ITM head), `threshold` (probability) or
    `top_fraction`, `fit_rows`."""

    rule = "itm_score"
    threshold_range = (0.0, 1.0)


@register("itm_score", ItmScoreConfig, "ITM match probability of a checkpoint's ITM head >= threshold / top fraction")
class ItmScore(ClipScore):
    measures = "ITM match probability"

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.head, head_cfg = load_itm_head(config.model, self.encoder.model)
        self._logits = {"pair": self._pair_logits, "multimodal": self._fused_logits}[head_cfg.fusion]

    def _pair_logits(self, rows: list[dict]) -> torch.Tensor:
        img = torch.from_numpy(self.encoder.encode(rows, "image"))  # [B, E], cached in the rows
        txt = torch.from_numpy(self.encoder.encode(rows, "text"))
        return self.head(img, txt)

    def _fused_logits(self, rows: list[dict]) -> torch.Tensor:
        parts = []
        for chunk in chunks(rows, self.encoder.batch_size):
            out = self.encoder.model(self.encoder.pixels(chunk), *self.encoder.tokens(chunk))
            parts.append(self.head(out.fused))  # fused [B, W] -> [B, 2]
        return torch.cat(parts)

    @torch.no_grad()
    def score_batch(self, rows: list[dict]) -> list[float]:
        if not rows:
            return []
        return [float(p) for p in match_probability(self._logits(rows))]
