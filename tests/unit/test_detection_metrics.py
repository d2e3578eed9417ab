"""Tests for vlmkit.eval.detection: hand-built cases with known answers and pycocotools parity."""

import contextlib
import io

import numpy as np
import pytest

from vlmkit.errors import DataError
from vlmkit.eval.detection import (
    ImageBoxes,
    average_precision,
    box_iou,
    match_detections,
    precision_recall,
)


def test_box_iou_known_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 9]])  # last one has zero area
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [10, 10, 11, 11]])
    expected = np.array([
        [1 / 7, 1.0, 0.0],  # overlap 1, union 4 + 4 - 1
        [0.0, 1 / 4, 0.0],  # touching at a corner is no overlap; inside a 2x2 box: 1 / 4
        [0.0, 0.0, 0.0],  # zero area: no intersection with anything
    ])
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=0, atol=1e-12)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_match_detections_greedy_by_score_and_best_iou():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    preds = np.array([
        [0, 0, 10, 10],    # perfect match of gt 0
        [0, 0, 10, 9],     # IoU 0.9 with gt 0, which is already taken -> FP
        [20, 0, 30, 6],    # IoU 0.6 with gt 1 -> TP at 0.5, FP at 0.75
    ], dtype=float)
    flags = match_detections(preds, gt, [0.5, 0.75])
    np.testing.assert_array_equal(flags, [[True, False, True], [True, False, False]])
    # A prediction takes the free ground truth with the highest IoU, not the first one.
    gt2 = np.array([[0, 0, 10, 6], [0, 0, 10, 10]], dtype=float)
    flags2 = match_detections(np.array([[0, 0, 10, 9.0], [0, 0, 10, 5.0]]), gt2, [0.5])
    np.testing.assert_array_equal(flags2, [[True, True]])  # 1st takes gt 1 (IoU .9), 2nd gt 0


def test_precision_recall_constructed_case():
    gts = [
        ImageBoxes(boxes=[[0, 0, 10, 10], [20, 20, 40, 40]], labels=["cat", "dog"]),
        ImageBoxes(boxes=[[0, 0, 5, 5]], labels=["cat"]),
        ImageBoxes(boxes=np.zeros((0, 4)), labels=[]),
    ]
    preds = [
        # cat: right box; dog: right box but labelled cat -> FP, dog missed -> FN.
        ImageBoxes(boxes=[[0, 0, 10, 10], [20, 20, 40, 40]], labels=["cat", "cat"]),
        # No scores: the first box (a duplicate far off) is ranked first, then the right one.
        ImageBoxes(boxes=[[50, 50, 60, 60], [0, 0, 5, 5], [0, 0, 5, 5]], labels=["cat"] * 3),
        ImageBoxes(boxes=[[1, 1, 2, 2]], labels=["cat"]),  # nothing to find -> FP
    ]
    pr = precision_recall(preds, gts, iou_threshold=0.5)
    assert (pr.true_positives, pr.false_positives, pr.false_negatives) == (2, 4, 1)
    assert pr.precision == pytest.approx(2 / 6) and pr.recall == pytest.approx(2 / 3)


def test_average_precision_hand_computed_ranking():
    # One class, 3 ground-truth boxes in 2 images; detections by score: TP, FP, TP, FP.
    gts = [ImageBoxes(boxes=[[0, 0, 10, 10], [20, 0, 30, 10]], labels=[1, 1]),
           ImageBoxes(boxes=[[0, 0, 10, 10]], labels=[1])]
    preds = [
        ImageBoxes(boxes=[[0, 0, 10, 10], [50, 50, 60, 60]], labels=[1, 1], scores=[0.9, 0.8]),
        ImageBoxes(boxes=[[0, 0, 10, 10], [70, 70, 80, 80]], labels=[1, 1], scores=[0.7, 0.6]),
    ]
    # recall after each detection: 1/3, 1/3, 2/3, 2/3; precision 1, 1/2, 2/3, 1/2.
    # Interpolated precision at recall r: 1 for r <= 1/3 (r = 0.00..0.33: 34 points),
    # 2/3 for 1/3 < r <= 2/3 (0.34..0.66: 33 points), 0 above (never reached).
    expected = (34 * 1.0 + 33 * (2 / 3)) / 101
    result = average_precision(preds, gts)
    np.testing.assert_allclose(result.per_class[1], np.full(10, expected), rtol=0, atol=1e-12)
    assert result.map_50 == pytest.approx(expected) and result.map_50_95 == pytest.approx(expected)


def test_average_precision_thresholds_and_class_handling():
    gts = [ImageBoxes(boxes=[[0, 0, 10, 10], [0, 0, 4, 4]], labels=["a", "b"])]
    preds = [ImageBoxes(
        boxes=[[0, 0, 10, 7.2], [0, 0, 4, 4]],  # "a" has IoU 0.72: TP up to 0.7, FP from 0.75
        labels=["a", "zebra"],  # "zebra" has no ground truth (ignored); "b" is never predicted
        scores=[0.5, 0.9],
    )]
    result = average_precision(preds, gts)
    assert set(result.per_class) == {"a", "b"}
    np.testing.assert_array_equal(result.per_class["a"], [1.0] * 5 + [0.0] * 5)
    np.testing.assert_array_equal(result.per_class["b"], np.zeros(10))
    assert result.map_50 == 0.5 and result.map_75 == 0.0
    assert result.map_50_95 == pytest.approx(0.25)


def test_average_precision_unscored_predictions_keep_given_order():
    gts = [ImageBoxes(boxes=[[0, 0, 10, 10]], labels=["a"])]
    wrong_first = [ImageBoxes(boxes=[[50, 50, 60, 60], [0, 0, 10, 10]], labels=["a", "a"])]
    right_first = [ImageBoxes(boxes=[[0, 0, 10, 10], [50, 50, 60, 60]], labels=["a", "a"])]
    assert average_precision(wrong_first, gts).map_50 == pytest.approx(0.5)
    assert average_precision(right_first, gts).map_50 == pytest.approx(1.0)


def test_average_precision_max_detections_cuts_per_image():
    gts = [ImageBoxes(boxes=[[0, 0, 10, 10]], labels=["a"])]
    # The right box has the lowest score; with max_detections=2 it is cut.
    preds = [ImageBoxes(boxes=[[50, 50, 60, 60], [70, 70, 80, 80], [0, 0, 10, 10]],
                        labels=["a"] * 3, scores=[0.9, 0.8, 0.1])]
    assert average_precision(preds, gts, max_detections=2).map_50 == 0.0
    assert average_precision(preds, gts, max_detections=3).map_50 == pytest.approx(1 / 3)


def test_image_boxes_reject_bad_input():
    with pytest.raises(DataError, match="shape"):
        ImageBoxes(boxes=[[0, 0, 1]], labels=["a"])
    with pytest.raises(DataError, match="x1 >= x0"):
        ImageBoxes(boxes=[[5, 0, 1, 1]], labels=["a"])
    with pytest.raises(DataError, match="labels"):
        ImageBoxes(boxes=[[0, 0, 1, 1]], labels=[])
    with pytest.raises(DataError, match="annotated"):
        average_precision([], [ImageBoxes(boxes=[], labels=[])])


def _random_dataset(rng: np.random.Generator, num_images: int, num_classes: int):
    """Ground truth plus predictions: jittered copies of the truth, duplicates and random boxes."""
    gts, preds = [], []
    for _ in range(num_images):
        n = rng.integers(0, 6)
        xy = rng.uniform(0, 200, size=(n, 2))
        wh = rng.uniform(5, 80, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, num_classes, size=n)
        gts.append((boxes, labels))
        keep = rng.random(n) < 0.8
        jitter = boxes[keep] + rng.normal(0, 3, size=(keep.sum(), 4))
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        noise_xy = rng.uniform(0, 200, size=(rng.integers(0, 5), 2))
        noise = np.concatenate([noise_xy, noise_xy + rng.uniform(5, 80, size=noise_xy.shape)], 1)
        pred_boxes = np.concatenate([jitter, jitter[:1] + 3, noise])
        pred_labels = np.concatenate([labels[keep], labels[keep][:1],
                                      rng.integers(0, num_classes, size=len(noise))])
        # Scores overlap between good and bad boxes so that the ranking matters.
        scores = np.concatenate([rng.uniform(0.3, 1.0, size=len(jitter) + 1 if len(jitter) else 0),
                                 rng.uniform(0.0, 0.7, size=len(noise))])
        preds.append((pred_boxes, pred_labels, scores))
    return gts, preds


def _cocoeval_stats(gts, preds, num_classes):
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
    annotations = []
    for img_id, (boxes, labels) in enumerate(gts):
        for b, lab in zip(boxes, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "iscrowd": 0,
                                "category_id": int(lab), "bbox": xywh(b),
                                "area": (b[2] - b[0]) * (b[3] - b[1])})
    results = [{"image_id": img_id, "category_id": int(lab), "bbox": xywh(b), "score": float(s)}
               for img_id, (boxes, labels, scores) in enumerate(preds)
               for b, lab, s in zip(boxes, labels, scores)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_mod.COCO()
        coco_gt.dataset = {"images": [{"id": i} for i in range(len(gts))],
                           "annotations": annotations,
                           "categories": [{"id": k} for k in range(num_classes)]}
        coco_gt.createIndex()
        evaluator = cocoeval_mod.COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: (T, R, K, areas, maxDets); area "all" = 0, maxDets 100 = last.
    per_class = evaluator.eval["precision"][:, :, :, 0, -1].mean(axis=1).T  # (K, T)
    return evaluator.stats, per_class


@pytest.mark.parametrize("seed", [0, 1])
def test_average_precision_matches_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gts, preds = _random_dataset(rng, num_images=25, num_classes=4)
    stats, coco_per_class = _cocoeval_stats(gts, preds, num_classes=4)
    result = average_precision(
        [ImageBoxes(boxes=b, labels=list(lab), scores=s) for b, lab, s in preds],
        [ImageBoxes(boxes=b, labels=list(lab)) for b, lab in gts],
    )
    assert result.map_50_95 == pytest.approx(stats[0], abs=1e-12)
    assert result.map_50 == pytest.approx(stats[1], abs=1e-12)
    assert result.map_75 == pytest.approx(stats[2], abs=1e-12)
    for k, ap in result.per_class.items():
        np.testing.assert_allclose(ap, coco_per_class[k], rtol=0, atol=1e-12)
    assert 0.2 < result.map_50_95 < result.map_50 < 1.0  # the sample is not degenerate
