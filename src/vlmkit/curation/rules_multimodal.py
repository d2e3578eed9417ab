"""Multimodal rules: the caption printed in the image (OCR), and the image-text alignment score.

- `ocr_caption`: RapidOCR (ONNX models shipped in the `rapidocr-onnxruntime` wheel, so it runs
  offline) reads the image's text; the score is the share of the caption's characters (lower-cased
  letters and digits, spaces dropped: OCR often merges words) found in that text in order
  (`difflib` matching blocks). High = the image mostly spells its own caption out, which teaches
  a model to read rather than to see (the "text spotting" shortcut).
- `clip_score`: cosine similarity of the image and caption embeddings of any vlmkit image-text
  checkpoint folder (CLIPScore without the 2.5 scale), batched; keep above `threshold`, or keep the
  top `top_fraction` (the threshold is then the matching quantile of the first `fit_rows` rows).

- `itm_score` (`vlmkit.curation.rules_itm`): the match probability of an ITM head trained with
  the checkpoint (`vlmkit train-contrastive --itm.weight W`), the same threshold / top-fraction
  semantics as `clip_score`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vlmkit.curation.encoder import ModelRule
from vlmkit.curation.rules import RuleBase, check_range, chunks, image_of, register
from vlmkit.errors import ConfigError

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def _norm(text: str) -> str:
    return _NOT_ALNUM.sub("", text.lower())


def caption_in_text(caption: str, ocr_text: str) -> float:
    """Share of the caption's letters/digits that appear, in order, in `ocr_text` (0..1)."""
    cap, found = _norm(caption), _norm(ocr_text)
    if not cap or not found:
        return 0.0
    blocks = difflib.SequenceMatcher(None, cap, found, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks) / len(cap)


@dataclass(kw_only=True, frozen=True)
class OcrConfig:
    max_overlap: float = 0.5  # removed when this share of the caption is printed in the image
    min_confidence: float = 0.5  # OCR lines below this recognition score are ignored
    # RapidOCR's detector scales the image so its shorter side is this (its default, 736); smaller
    # is faster (320: ~3x) but misses small print.
    det_side: int = 736

    def __post_init__(self) -> None:
        check_range("ocr_caption.max_overlap", self.max_overlap, 0.0, 1.0)
        check_range("ocr_caption.min_confidence", self.min_confidence, 0.0, 1.0)
        check_range("ocr_caption.det_side", self.det_side, 32)


def _ocr_engine(det_side: int):
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        raise ConfigError("rule ocr_caption needs the OCR extra: pip install rapidocr-onnxruntime "
                          "(or 'vlmkit[curate]')") from None
    import logging

    engine = RapidOCR(det_limit_side_len=det_side)
    logging.getLogger("RapidOCR").setLevel(logging.WARNING)  # it logs every call at INFO
    return engine


@register("ocr_caption", OcrConfig, "the caption is not printed in the image (RapidOCR)", "rapidocr-onnxruntime")
class OcrCaption(RuleBase):
    measures = "share of the caption printed"
    needs_image = True

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.engine = _ocr_engine(config.det_side)

    def read(self, image) -> str:
        """The text OCR finds in a PIL image (lines above min_confidence, joined by spaces)."""
        result, _ = self.engine(np.asarray(image)[:, :, ::-1].copy(), use_cls=False)  # RGB -> BGR
        return " ".join(line[1] for line in result or [] if line[2] >= self.config.min_confidence)

    def score(self, row: dict) -> float:
        return caption_in_text(row["text"], self.read(image_of(row)))

    def keep(self, value: float) -> bool:
        return value < self.config.max_overlap


@dataclass(kw_only=True, frozen=True)
class ScoreConfig:
    model: str = ""  # an image-text checkpoint folder (vlmkit create / train-contrastive export)
    threshold: float | None = None  # keep rows with cosine >= threshold ...
    top_fraction: float | None = None  # ... or the top fraction (quantile of the first fit_rows rows)
    fit_rows: int = 2048

    # Not fields (no annotation): the rule's name in messages, and the range a threshold must be in
    # (None: any number; a cosine threshold above 1 removes every row, which is allowed).
    rule = "clip_score"
    threshold_range = None

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError(f"{self.rule}.model must name an image-text checkpoint folder")
        if (self.threshold is None) == (self.top_fraction is None):
            raise ConfigError(f"{self.rule} needs exactly one of threshold or top_fraction")
        if self.threshold is not None and self.threshold_range is not None:
            check_range(f"{self.rule}.threshold", self.threshold, *self.threshold_range)
        if self.top_fraction is not None:
            check_range(f"{self.rule}.top_fraction", self.top_fraction, 0.0, 1.0)
        check_range(f"{self.rule}.fit_rows", self.fit_rows, 1)


@register("clip_score", ScoreConfig, "image-caption cosine of a two-tower checkpoint >= threshold / top fraction")
class ClipScore(ModelRule):
    measures = "image-caption cosine"

    def __init__(self, config, resources) -> None:
        super().__init__(config, resources)
        self.threshold = config.threshold
        self.fit_rows = config.fit_rows if config.top_fraction is not None else 0

    def score_batch(self, rows: list[dict]) -> list[float]:
        if not rows:
            return []
        img, txt = self.encoder.encode(rows, "image"), self.encoder.encode(rows, "text")
        return [float(v) for v in (img * txt).sum(-1)]  # [B] cosine of normalised embeddings

    def fit(self, rows: Iterable[dict]) -> None:
        """Threshold = the k-th best score of the fit rows, k = round(top_fraction * n)."""
        scores = [s for chunk in chunks(rows, self.resources.batch_size) for s in self.score_batch(chunk)]
        scores = np.sort(np.array(scores, np.float64))[::-1]
        k = int(round(self.config.top_fraction * len(scores)))
        self.threshold = float(scores[k - 1]) if k else float("inf")

    def fitted_state(self) -> dict:
        return {"threshold": self.threshold}

    def load_fitted(self, state: dict) -> None:
        self.threshold = state["threshold"]

    def keep(self, value: float) -> bool:
        return value >= self.threshold
