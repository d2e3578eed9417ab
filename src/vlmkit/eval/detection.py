"""Box detection metrics: IoU, precision/recall at one IoU threshold, COCO-style AP and mAP.

Boxes are (x0, y0, x1, y1) in any consistent unit (pixels, or PaliGemma's 0..1023 <loc> grid), with
x1 >= x0 and y1 >= y0. Areas are (x1 - x0) * (y1 - y0), without COCO's old "+1" pixel convention.

AP follows COCOeval ("bbox", area "all", maxDets 100): per image and class the detections are sorted
by score and cut to `max_detections`; each detection, in score order, takes the still unmatched
ground-truth box of its class with the highest IoU >= threshold; precision is made monotone and
sampled at the 101 recall points 0, 0.01, ..., 1. mAP averages over classes that have at least one
ground-truth box (classes only predicted are ignored, as in COCOeval). Not supported: crowd /
"ignore" boxes and COCO's small/medium/large area ranges.

Predictions without scores (PaliGemma's detect output has none) count as score 1 in the order
given, so the ranking is the model's output order.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmkit.errors import DataError

# Same construction as COCOeval so the thresholds are bit-identical (0.55 is 0.5499999...).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1)


@dataclass(kw_only=True)
class ImageBoxes:
    """The boxes of one image: ground truth (no scores) or predictions (optional scores).

    Attributes:
        boxes: (N, 4) float64 array of (x0, y0, x1, y1); lists are converted.
        labels: N class labels (str or int), compared with ==.
        scores: (N,) float64 confidences, or None (= all 1, ranked in the given order).
    """

    boxes: np.ndarray
    labels: Sequence[Hashable]
    scores: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise DataError(f"boxes must have shape (N, 4), got {boxes.shape}")
        if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
            raise DataError("boxes must be finite (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0")
        if len(self.labels) != len(boxes):
            raise DataError(f"{len(boxes)} boxes but {len(self.labels)} labels")
        self.boxes, self.labels = boxes, list(self.labels)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != len(boxes):
                raise DataError(f"{len(boxes)} boxes but {len(self.scores)} scores")

    def ranked(
        self, label: Hashable, max_detections: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (K, 4) boxes of class `label` and their (K,) scores, highest score first (ties keep
        the given order), at most `max_detections` of them."""
        idx = np.array([i for i, lab in enumerate(self.labels) if lab == label], dtype=np.int64)
        scores = np.ones(len(idx)) if self.scores is None else self.scores[idx]
        order = np.argsort(-scores, kind="mergesort")[:max_detections]  # mergesort: stable
        return self.boxes[idx[order]], scores[order]


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M) float64; 0 where the union is 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = np.clip(bottom_right - top_left, 0.0, None).prod(axis=-1)  # (N, M)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections(
    pred_boxes: np.ndarray, gt_boxes: np.ndarray, iou_thresholds: Sequence[float]
) -> np.ndarray:
    """Greedy matching of score-ordered predictions to ground truth of one image and class.

    Args:
        pred_boxes: (N, 4) predictions, already sorted by decreasing score.
        gt_boxes: (M, 4) ground-truth boxes.
        iou_thresholds: T thresholds; matching is done independently for each.
    Returns:
        (T, N) bool: whether prediction n is a true positive at threshold t. Each prediction takes
        the unmatched ground-truth box with the highest IoU >= t; a ground-truth box matches once.
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    is_tp = np.zeros((len(thresholds), len(pred_boxes)), dtype=bool)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return is_tp
    ious = box_iou(pred_boxes, gt_boxes)  # (N, M)
    gt_taken = np.zeros((len(thresholds), len(gt_boxes)), dtype=bool)  # (T, M)
    for n in range(len(pred_boxes)):
        # (T, M): IoU of prediction n with the ground truth still free at each threshold.
        candidates = np.where(~gt_taken & (ious[n][None, :] >= thresholds[:, None]), ious[n], -1.0)
        best = candidates.argmax(axis=1)  # (T,)
        hit = candidates[np.arange(len(thresholds)), best] >= 0.0
        is_tp[hit, n] = True
        gt_taken[np.nonzero(hit)[0], best[hit]] = True
    return is_tp


def _check_images(predictions: Sequence[ImageBoxes], ground_truths: Sequence[ImageBoxes]) -> None:
    if len(predictions) != len(ground_truths):
        raise DataError(f"{len(predictions)} predicted images but {len(ground_truths)} annotated")


@dataclass(frozen=True, kw_only=True)
class PrecisionRecall:
    """Micro-averaged detection counts at one IoU threshold (over all images and classes)."""

    precision: float  # tp / (tp + fp); 0 when there are no predictions
    recall: float  # tp / (tp + fn); 0 when there is no ground truth
    true_positives: int
    false_positives: int
    false_negatives: int


def precision_recall(
    predictions: Sequence[ImageBoxes],
    ground_truths: Sequence[ImageBoxes],
    *,
    iou_threshold: float = 0.5,
) -> PrecisionRecall:
    """Precision and recall at `iou_threshold` with greedy score-ordered matching per class.

    Every prediction counts (no score cut-off, no max_detections limit): the PaliGemma use case is
    "which of the boxes the model printed are right", not a ranking.
    """
    _check_images(predictions, ground_truths)
    tp = n_pred = n_gt = 0
    for pred, gt in zip(predictions, ground_truths):
        n_pred += len(pred.boxes)
        n_gt += len(gt.boxes)
        for label in set(pred.labels) & set(gt.labels):
            pred_boxes, _ = pred.ranked(label)
            gt_boxes, _ = gt.ranked(label)
            tp += int(match_detections(pred_boxes, gt_boxes, [iou_threshold]).sum())
    return PrecisionRecall(
        precision=tp / n_pred if n_pred else 0.0,
        recall=tp / n_gt if n_gt else 0.0,
        true_positives=tp,
        false_positives=n_pred - tp,
        false_negatives=n_gt - tp,
    )


def interpolated_ap(
    is_tp: np.ndarray, scores: np.ndarray, num_gt: int, recall_points: np.ndarray
) -> np.ndarray:
    """COCO interpolated AP of one class from all its detections in the dataset.

    Args:
        is_tp: (T, D) bool true-positive flags per threshold of the D detections.
        scores: (D,) their scores; ranking is by decreasing score, stable for ties.
        num_gt: number of ground-truth boxes of the class (> 0).
        recall_points: (R,) recall values at which precision is sampled.
    Returns:
        (T,) AP per threshold: the mean over recall points r of the best precision at recall >= r
        (0 for recall points the detections never reach).
    """
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(is_tp[:, order], axis=1, dtype=np.float64)  # (T, D)
    fp = np.cumsum(~is_tp[:, order], axis=1, dtype=np.float64)  # (T, D)
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, 1.0)
    # "Best precision at recall >= r": running max from the right makes precision non-increasing.
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    ap = np.zeros(len(is_tp))
    for t in range(len(is_tp)):
        first = np.searchsorted(recall[t], recall_points, side="left")  # (R,)
        reached = first < recall.shape[1]
        ap[t] = envelope[t, first[reached]].sum() / len(recall_points)
    return ap


@dataclass(frozen=True, kw_only=True)
class DetectionAP:
    """COCO-style average precision.

    Attributes:
        iou_thresholds: the T thresholds (0.5, 0.55, ..., 0.95).
        per_class: label -> (T,) AP at each threshold, for every class with ground truth.
        map_50: mean over classes of AP@0.5 (nan if there is no ground truth at all).
        map_75: mean over classes of AP@0.75.
        map_50_95: mean over classes and thresholds ("mAP@[.5:.95]", COCO's headline AP).
    """

    iou_thresholds: tuple[float, ...]
    per_class: dict[Hashable, np.ndarray]
    map_50: float
    map_75: float
    map_50_95: float


def average_precision(
    predictions: Sequence[ImageBoxes],
    ground_truths: Sequence[ImageBoxes],
    *,
    max_detections: int = 100,
) -> DetectionAP:
    """Per-class AP at the COCO IoU thresholds, mAP@0.5, mAP@0.75 and mAP@[.5:.95].

    `predictions[i]` and `ground_truths[i]` belong to the same image. See the module docstring for
    the exact protocol; with scores given, results equal pycocotools' COCOeval bbox stats.
    """
    _check_images(predictions, ground_truths)
    thresholds = COCO_IOU_THRESHOLDS
    classes = sorted({lab for gt in ground_truths for lab in gt.labels}, key=repr)
    per_class: dict[Hashable, np.ndarray] = {}
    for label in classes:
        flags, scores, num_gt = [], [], 0
        for pred, gt in zip(predictions, ground_truths):
            pred_boxes, pred_scores = pred.ranked(label, max_detections)
            gt_boxes, _ = gt.ranked(label)
            flags.append(match_detections(pred_boxes, gt_boxes, thresholds))
            scores.append(pred_scores)
            num_gt += len(gt_boxes)
        is_tp = np.concatenate(flags, axis=1)  # (T, D) over all images, image order kept
        per_class[label] = interpolated_ap(is_tp, np.concatenate(scores), num_gt,
                                           COCO_RECALL_POINTS)
    no_classes = np.full((1, len(thresholds)), np.nan)
    table = np.stack(list(per_class.values())) if per_class else no_classes  # (K, T)
    return DetectionAP(
        iou_thresholds=tuple(float(t) for t in thresholds),
        per_class=per_class,
        map_50=float(table[:, 0].mean()),
        map_75=float(table[:, 5].mean()),
        map_50_95=float(table.mean()),
    )
