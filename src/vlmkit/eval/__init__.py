"""Evaluation metrics: captioning/VQA/OCR text metrics, detection AP, retrieval and zero-shot.

Plain functions over predictions and references (numpy / torch only); dataset loops and model
calls live in the evaluators that use them.
"""

from vlmkit.eval.detection import (
    DetectionAP,
    ImageBoxes,
    PrecisionRecall,
    average_precision,
    box_iou,
    match_detections,
    precision_recall,
)
from vlmkit.eval.retrieval import (
    RetrievalRecall,
    build_zeroshot_classifier,
    retrieval_recall,
    retrieval_recall_from_embeddings,
    zeroshot_accuracy,
    zeroshot_weights,
)
from vlmkit.eval.text_metrics import (
    BleuScore,
    CiderScore,
    ErrorRate,
    bleu,
    caption_tokenize,
    character_error_rate,
    cider_d,
    edit_distance,
    exact_match,
    normalize_vqa_answer,
    vqa_accuracy,
    vqa_score,
)

__all__ = [
    "BleuScore", "CiderScore", "DetectionAP", "ErrorRate", "ImageBoxes", "PrecisionRecall",
    "RetrievalRecall", "average_precision", "bleu", "box_iou", "build_zeroshot_classifier",
    "caption_tokenize", "character_error_rate", "cider_d", "edit_distance", "exact_match",
    "match_detections", "normalize_vqa_answer", "precision_recall", "retrieval_recall",
    "retrieval_recall_from_embeddings", "vqa_accuracy", "vqa_score", "zeroshot_accuracy",
    "zeroshot_weights",
]
