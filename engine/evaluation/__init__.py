"""Evaluate predictions against ground truth: COCO metrics, operating points, pictures.

    >>> report = engine.evaluate(model.predict("val/"), "val/annotations.json")  # doctest: +SKIP
    >>> report.map50, report.classes[0].best_f1_confidence                       # doctest: +SKIP

See `evaluate`; the inputs it reads are in `engine.evaluation.inputs`, the metrics in
`engine.evaluation.metrics`, the report in `engine.evaluation.report`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.cocoeval import Params

from engine.evaluation.inputs import GroundTruth, iter_detected, load_ground_truth
from engine.evaluation.metrics import (
    IOU_TYPES,
    ChunkedCocoEval,
    best_f1,
    coco_index,
    confusion_counts,
    f1_curve,
    operating_point,
)
from engine.evaluation.report import ClassMetrics, EvaluationReport, write_report

__all__ = ["ClassMetrics", "EvaluationReport", "GroundTruth", "evaluate", "load_ground_truth"]

logger = logging.getLogger(__name__)

#: The `EvaluationReport` fields of ``COCOeval.stats``, in its order.
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar_1",
              "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")  # fmt: skip

#: Images evaluated together by one COCOeval.evaluate() call.
DEFAULT_CHUNK_SIZE = 1000


def evaluate(
    predictions: Any,
    ground_truth: Any,
    *,
    iou_type: str = "bbox",
    conf: float = 0.5,
    iou_threshold: float = 0.5,
    out: str | Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EvaluationReport:
    """Evaluate predictions against ground truth, the way COCO evaluates detections.

    Images are matched by name (a Prediction's ``name``, else its file name, against the
    ground truth's ``file_name`` or its base name when unique), or by ``image_id`` for a
    COCO results file; classes by name. Ground-truth images without a prediction count as
    every object missed.

    Args:
        predictions: Predictions: a list or any iterable of `engine.Prediction` (the
            results of ``predict``, a ``predict(stream=True)`` stream, a detached session),
            a Tessera export (``predictions.jsonl``, or its folder), or a COCO results
            file (a list of ``image_id, category_id, bbox, score[, segmentation]``; ids of
            the ground truth). Read one image at a time: at most ``chunk_size`` images'
            predictions are held at once.
        ground_truth: A COCO dataset file (or dict), a local dataset folder a platform
            plug-in reads, a Tessera COCO export folder, or
            Predictions of labelled images (scores ignored).
        iou_type: "bbox" (boxes) or "segm" (masks; both sides need masks).
        conf: The confidence of the operating point (precision, recall, F1, confusion).
        iou_threshold: The IoU of the operating point: one of COCO's thresholds 0.5, 0.55,
            ... 0.95.
        out: A folder for metrics.json, report.md and the PNG pictures (none if None).
        chunk_size: Images evaluated per COCOeval.evaluate() call.

    Returns:
        The figures (`EvaluationReport`; ``to_dict()`` for JSON).

    Raises:
        ValueError: A bad argument or input, a prediction for an image the ground truth
            lacks, a class on one side only, or an image predicted twice.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if not isinstance(conf, (int, float)) or not 0 <= conf <= 1:
        raise ValueError(f"conf must be a number in [0, 1], got {conf!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    truth = load_ground_truth(ground_truth)
    index = coco_index(truth.dataset)
    scorer = ChunkedCocoEval(index, iou_type)
    thresholds = [round(float(t), 2) for t in Params(iouType=iou_type).iouThrs]
    if iou_threshold not in thresholds:
        raise ValueError(f"iou_threshold must be one of {thresholds}, got {iou_threshold!r}")
    if iou_type == "segm" and not truth.has_masks:
        raise ValueError(f"iou_type='segm': the ground truth ({truth.source}) has no masks")
    categories = sorted(index.getCatIds())
    position = {cat: k for k, cat in enumerate(categories)}
    confusion = np.zeros((len(categories) + 1,) * 2, np.int64)
    seen: set[int] = set()
    failed: list[str] = []
    chunk_ids: list[int] = []
    chunk_rows: list[dict[str, Any]] = []

    def flush() -> None:
        scorer.add(chunk_ids, chunk_rows)
        chunk_ids.clear()
        chunk_rows.clear()

    # 1) the predictions, image by image, in chunks
    for detected in iter_detected(predictions, truth):
        if detected.image_id in seen:
            name = index.imgs[detected.image_id].get("file_name")
            raise ValueError(f"image {name!r} (id {detected.image_id}) is predicted twice")
        if iou_type == "segm" and detected.rows and not detected.has_masks:
            name = index.imgs[detected.image_id].get("file_name")
            raise ValueError(f"iou_type='segm': the predictions for {name!r} have no masks")
        seen.add(detected.image_id)
        if detected.error is not None:
            failed.append(str(index.imgs[detected.image_id].get("file_name")))
        confusion += confusion_counts(
            index, detected.image_id, detected.rows, position, conf, iou_threshold, iou_type
        )
        chunk_ids.append(detected.image_id)
        chunk_rows.extend(detected.rows)
        if len(chunk_ids) >= chunk_size:
            flush()
    flush()
    # 2) ground-truth images nobody predicted: every object missed
    unseen = [i for i in truth.image_ids if i not in seen]
    for start in range(0, len(unseen), chunk_size):
        block = unseen[start : start + chunk_size]
        scorer.add(block, [])
        for image_id in block:
            confusion += confusion_counts(
                index, image_id, [], position, conf, iou_threshold, iou_type
            )
    # 3) accumulate, then the operating points from the same matches
    report = _report(
        scorer, index, categories, confusion, conf, iou_threshold, len(seen) - len(failed)
    )
    report.failed_images = failed
    if failed:
        logger.warning(
            "evaluate: %d image(s) could not be predicted and count as predicting nothing: %s",
            len(failed),
            ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else ""),
        )
    if out is not None:
        write_report(report, out)
    return report


def _report(
    scorer: ChunkedCocoEval,
    index: Any,
    categories: list[int],
    confusion: np.ndarray,
    conf: float,
    iou_threshold: float,
    predicted_images: int,
) -> EvaluationReport:
    ev = scorer.finish()
    stats = [float(s) for s in ev.stats]
    p = ev.params
    t = int(np.argmin(np.abs(p.iouThrs - iou_threshold)))
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    precision_all = ev.eval["precision"]  # [T, R, K, A, M]
    recall_all = ev.eval["recall"]  # [T, K, A, M]
    confidences = np.linspace(0, 1, 101)
    classes, curves = [], {}
    tp = fp = positives_all = 0
    for k, cat in enumerate(categories):
        name = index.cats[cat]["name"]
        scores, hits, positives = scorer.matches(t, k)
        point = operating_point(scores, hits, positives, conf)
        best = best_f1(scores, hits, positives)
        tp, fp, positives_all = tp + point["tp"], fp + point["fp"], positives_all + positives
        ap_values = precision_all[:, :, k, 0, -1]
        ap50_values = precision_all[t50, :, k, 0, -1]
        ar_values = recall_all[:, k, 0, -1]
        classes.append(
            ClassMetrics(
                name=name,
                ap=_mean(ap_values),
                ap50=_mean(ap50_values),
                ar=_mean(ar_values),
                precision=point["precision"],
                recall=point["recall"],
                f1=point["f1"],
                best_f1=best["f1"],
                best_f1_confidence=best["confidence"],
                ground_truth=positives,
                detections=len(scores),
            )
        )
        curves[name] = {
            "precision": [float(v) for v in ap50_values],
            "f1": [float(v) for v in f1_curve(scores, hits, positives, confidences)],
        }
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives_all if positives_all else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return EvaluationReport(
        iou_type=scorer.iou_type,
        **dict(zip(COCO_STATS, stats)),
        conf=float(conf),
        iou_threshold=float(iou_threshold),
        precision=precision,
        recall=recall,
        f1=f1,
        classes=classes,
        confusion_matrix=confusion.tolist(),
        confusion_labels=[index.cats[c]["name"] for c in categories] + ["background"],
        images=len(p.imgIds),
        predicted_images=predicted_images,
        curves=curves,
    )


def _mean(values: np.ndarray) -> float:
    """COCO's mean over the valid entries (-1 marks none), -1 when there are none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0
