"""COCO metrics by pycocotools' COCOeval, computed image chunk by image chunk.

`ChunkedCocoEval` runs ``COCOeval.evaluate()`` on each chunk of images (the per-image
matching, ``evalImgs``), keeps only those compact matches, and hands them all to one
``COCOeval.accumulate()`` / ``summarize()`` at the end, in COCOeval's own order (category,
area range, image id), so the figures equal one COCOeval over every image at once while
no more than a chunk of predictions is ever held. The operating-point figures (precision,
recall and F1 at a confidence, the confidence that maximises F1) are read from the same
matches; the confusion matrix (`confusion_counts`) matches class-agnostically.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["IOU_TYPES", "ChunkedCocoEval", "coco_index", "confusion_counts", "operating_point"]

#: What COCOeval compares: boxes, or masks ("segm").
IOU_TYPES = ("bbox", "segm")


def _quiet() -> contextlib.AbstractContextManager:
    return contextlib.redirect_stdout(io.StringIO())  # pycocotools prints its progress


def coco_index(dataset: dict[str, Any]) -> COCO:
    """A pycocotools `COCO` over a dataset dict (without reading a file)."""
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def results_coco(truth: COCO, rows: list[dict[str, Any]], iou_type: str) -> COCO:
    """COCO result rows as COCOeval reads them (``COCO.loadRes``; none: an empty index).

    For ``"bbox"`` a row's box is used (area = w * h); for ``"segm"`` its mask (area = the
    mask's, box = the mask's), as ``loadRes`` does for results without boxes.
    """
    if not rows:
        empty = {
            "images": truth.dataset["images"],
            "categories": truth.dataset["categories"],
            "annotations": [],
        }
        return coco_index(empty)
    key = "segmentation" if iou_type == "bbox" else "bbox"
    with _quiet():
        return truth.loadRes([{k: v for k, v in row.items() if k != key} for row in rows])


class ChunkedCocoEval:
    """COCOeval over images given chunk by chunk; the same figures as one COCOeval.

    Of each chunk's ``evalImgs`` only what ``accumulate`` reads is kept, packed into flat
    arrays (per detection: its score, and whether it is matched / ignored at each IoU
    threshold; per object: whether it is ignored): about 30 bytes a detection and area
    range, instead of a dict of small arrays per image, class and area range.

    Args:
        truth: The ground truth index.
        iou_type: One of `IOU_TYPES`.
    """

    def __init__(self, truth: COCO, iou_type: str) -> None:
        self.truth = truth
        self.iou_type = iou_type
        self.coco_eval: COCOeval | None = None
        self._keys: list[np.ndarray] = []  # (k, a, image id, dt count, gt count) per entry
        self._scores: list[np.ndarray] = []
        self._matched: list[np.ndarray] = []  # (D, T) bool
        self._ignored: list[np.ndarray] = []  # (D, T) bool
        self._gt_ignored: list[np.ndarray] = []
        self._packed: _PackedMatches | None = None

    def add(self, image_ids: Iterable[int], rows: list[dict[str, Any]]) -> None:
        """Evaluate one chunk: its images (those without rows too) and their result rows."""
        ids = sorted(set(image_ids))
        if not ids:
            return
        ev = COCOeval(self.truth, results_coco(self.truth, rows, self.iou_type), self.iou_type)
        ev.params.imgIds = ids
        with _quiet():
            ev.evaluate()
        p = ev.params
        areas, n_img, n_thr = len(p.areaRng), len(p.imgIds), len(p.iouThrs)
        keys: list[tuple[int, ...]] = []
        scores, matched, ignored, gt_ignored = [], [], [], []
        for k in range(len(p.catIds)):
            for a in range(areas):
                for i, image in enumerate(p.imgIds):
                    entry = ev.evalImgs[(k * areas + a) * n_img + i]
                    if entry is None:
                        continue
                    dt = len(entry["dtScores"])
                    keys.append((k, a, image, dt, len(entry["gtIgnore"])))
                    scores.append(np.asarray(entry["dtScores"], np.float64))
                    matched.append(np.asarray(entry["dtMatches"]).reshape(n_thr, dt).T > 0)
                    ignored.append(np.asarray(entry["dtIgnore"], bool).reshape(n_thr, dt).T)
                    gt_ignored.append(np.asarray(entry["gtIgnore"], bool).reshape(-1))
        if keys:  # one array of each per chunk: small arrays never pile up
            self._keys.append(np.array(keys, np.int64))
            self._scores.append(np.concatenate(scores))
            self._matched.append(np.concatenate(matched))
            self._ignored.append(np.concatenate(ignored))
            self._gt_ignored.append(np.concatenate(gt_ignored))

    def _pack(self) -> None:
        """Join the chunks' arrays into one of each."""
        for name in ("_scores", "_matched", "_ignored", "_gt_ignored", "_keys"):
            parts = getattr(self, name)
            if len(parts) > 1:
                setattr(self, name, [np.concatenate(parts)])

    def _matches(self) -> _PackedMatches:
        if self._packed is None:
            self._pack()
            n_thr = len(self.truth_params().iouThrs)
            first = lambda parts, shape: parts[0] if parts else np.zeros(shape)  # noqa: E731
            self._packed = _PackedMatches(
                first(self._keys, (0, 5)).astype(np.int64),
                first(self._scores, (0,)),
                first(self._matched, (0, n_thr)).astype(bool),
                first(self._ignored, (0, n_thr)).astype(bool),
                first(self._gt_ignored, (0,)).astype(bool),
            )
        return self._packed

    def truth_params(self) -> Any:
        """COCOeval's default parameters for this ground truth and IoU type."""
        return COCOeval(self.truth, iouType=self.iou_type).params

    def finish(self) -> COCOeval:
        """Accumulate and summarise every chunk's matches; returns the COCOeval."""
        ev = COCOeval(self.truth, iouType=self.iou_type)
        packed = self._matches()
        ev.params.imgIds = sorted({int(i) for i in np.unique(packed.keys[:, 2])}) or [0]
        ev._paramsEval = copy.deepcopy(ev.params)  # what evaluate() would have left
        p = ev.params
        ev.evalImgs = packed.as_eval_imgs(len(p.catIds), len(p.areaRng), p.imgIds)
        with _quiet():
            ev.accumulate()
            ev.summarize()
        self.coco_eval = ev
        return ev

    def matches(self, iou_index: int, category_index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """One category's detections over all images (area "all", the largest maxDets).

        Returns:
            Their scores, whether each is a true positive at ``iouThrs[iou_index]``
            (ignored ones left out), and the number of ground-truth objects not ignored.
        """
        packed = self._matches()
        rows = np.flatnonzero((packed.keys[:, 0] == category_index) & (packed.keys[:, 1] == 0))
        dt = _spans(packed.dt_start[rows], packed.keys[rows, 3])
        gt = _spans(packed.gt_start[rows], packed.keys[rows, 4])
        keep = ~packed.ignored[dt, iou_index]
        positives = int(np.count_nonzero(~packed.gt_ignored[gt]))
        return packed.scores[dt][keep], packed.matched[dt, iou_index][keep], positives


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ... of each span, concatenated."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(total)


class _PackedMatches:
    """Every kept ``evalImgs`` entry, packed; `as_eval_imgs` unpacks them on demand."""

    def __init__(
        self,
        keys: np.ndarray,
        scores: np.ndarray,
        matched: np.ndarray,
        ignored: np.ndarray,
        gt_ignored: np.ndarray,
    ) -> None:
        self.keys, self.scores, self.matched, self.ignored = keys, scores, matched, ignored
        self.gt_ignored = gt_ignored
        self.dt_start = np.cumsum(keys[:, 3]) - keys[:, 3]
        self.gt_start = np.cumsum(keys[:, 4]) - keys[:, 4]

    def as_eval_imgs(self, categories: int, areas: int, image_ids: list[int]) -> _EvalImgs:
        """A sequence indexed as COCOeval's ``evalImgs`` (category, area, image)."""
        position = np.searchsorted(np.asarray(image_ids), self.keys[:, 2])
        slot = np.full(categories * areas * len(image_ids), -1, np.int32)
        flat = (self.keys[:, 0] * areas + self.keys[:, 1]) * len(image_ids) + position
        slot[flat] = np.arange(len(self.keys), dtype=np.int32)
        return _EvalImgs(self, slot)


class _EvalImgs:
    """COCOeval's ``evalImgs`` list, each entry built when ``accumulate`` reads it."""

    def __init__(self, packed: _PackedMatches, slot: np.ndarray) -> None:
        self._packed, self._slot = packed, slot

    def __len__(self) -> int:
        return len(self._slot)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        entry = int(self._slot[index])
        if entry < 0:
            return None
        p = self._packed
        d0, dn = int(p.dt_start[entry]), int(p.keys[entry, 3])
        g0, gn = int(p.gt_start[entry]), int(p.keys[entry, 4])
        return {
            "dtScores": p.scores[d0 : d0 + dn],
            "dtMatches": p.matched[d0 : d0 + dn].T,
            "dtIgnore": p.ignored[d0 : d0 + dn].T,
            "gtIgnore": p.gt_ignored[g0 : g0 + gn],
        }


def operating_point(
    scores: np.ndarray, hits: np.ndarray, positives: int, conf: float
) -> dict[str, float]:
    """Precision, recall and F1 of the detections scoring at least ``conf``.

    Example:
        >>> operating_point(np.array([0.9, 0.8, 0.3]), np.array([True, False, True]), 4, 0.5)
        {'precision': 0.5, 'recall': 0.25, 'f1': 0.3333333333333333, 'tp': 1, 'fp': 1, 'fn': 3}
    """
    kept = scores >= conf
    tp = int(np.count_nonzero(hits & kept))
    fp = int(np.count_nonzero(~hits & kept))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp,
            "fn": positives - tp}  # fmt: skip


def f1_curve(
    scores: np.ndarray, hits: np.ndarray, positives: int, confidences: np.ndarray
) -> np.ndarray:
    """F1 at each of ``confidences`` (detections scoring at least it)."""
    if not len(scores):
        return np.zeros(len(confidences))
    order = np.argsort(-scores, kind="mergesort")
    ranked, tp = scores[order], np.cumsum(hits[order])
    kept = len(ranked) - np.searchsorted(ranked[::-1], confidences, side="left")
    tp_at = np.where(kept > 0, tp[np.maximum(kept - 1, 0)], 0)
    precision = np.divide(tp_at, kept, out=np.zeros(len(kept)), where=kept > 0)
    recall = tp_at / positives if positives else np.zeros(len(kept))
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros(len(kept)), where=total > 0)


def best_f1(scores: np.ndarray, hits: np.ndarray, positives: int) -> dict[str, float]:
    """The confidence (one of the scores) at which F1 is highest, and that F1."""
    if not len(scores) or not positives:
        return {"confidence": 1.0, "f1": 0.0}
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    tp = np.cumsum(hits[order])
    last = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold keeps every tied score
    precision = tp / np.arange(1, len(ranked) + 1)
    recall = tp / positives
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(total)), where=total > 0)
    f1 = np.where(last, f1, -1.0)
    best = int(np.argmax(f1))
    return {"confidence": float(ranked[best]), "f1": float(f1[best])}


def confusion_counts(
    truth: COCO,
    image_id: int,
    rows: list[dict[str, Any]],
    category_index: dict[int, int],
    conf: float,
    iou_threshold: float,
    iou_type: str,
) -> np.ndarray:
    """One image's confusion matrix: rows the true class, columns the predicted one.

    Index ``len(category_index)`` is background. Detections scoring at least ``conf`` are
    visited by score descending; each takes the unmatched ground-truth object (crowds
    left out) it overlaps most, at IoU at least ``iou_threshold``, whatever the classes:
    a match counts at (true, predicted), a detection left over at (background,
    predicted), an object left over at (true, background). The definition of
    supervision's and ultralytics' confusion matrices.
    """
    n = len(category_index)
    counts = np.zeros((n + 1, n + 1), np.int64)
    gts = [a for a in truth.imgToAnns.get(image_id, []) if not a.get("iscrowd")]
    dts = sorted((r for r in rows if r["score"] >= conf), key=lambda r: -r["score"])
    if gts and dts:
        if iou_type == "segm":
            d_geo = [_rle(r["segmentation"]) for r in dts]
            g_geo = [truth.annToRLE(a) for a in gts]
        else:
            d_geo = [r["bbox"] for r in dts]
            g_geo = [a["bbox"] for a in gts]
        ious = np.asarray(coco_mask.iou(d_geo, g_geo, [0] * len(gts))).reshape(len(dts), len(gts))
    else:
        ious = np.zeros((len(dts), len(gts)))
    taken = np.zeros(len(gts), bool)
    for d, row in enumerate(dts):
        predicted = category_index[row["category_id"]]
        overlap = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(overlap)) if len(gts) else -1
        if g >= 0 and overlap[g] >= iou_threshold:
            taken[g] = True
            counts[category_index[gts[g]["category_id"]], predicted] += 1
        else:
            counts[n, predicted] += 1
    for g in np.flatnonzero(~taken):
        counts[category_index[gts[g]["category_id"]], n] += 1
    return counts


def _rle(segmentation: dict[str, Any]) -> dict[str, Any]:
    counts = segmentation["counts"]
    size = list(segmentation["size"])
    return {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
