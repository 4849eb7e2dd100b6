"""Sliced (tiled) inference helpers: the tile grid and the merge of per-tile detections.

`tile_grid` cuts an image into overlapping windows of one size; after each tile's
detections are shifted back into the full image (`Detections.shifted`) and concatenated
(`Detections.merge`), `merge_detections` removes or fuses the duplicates that the overlaps
produce.

The merges reproduce SAHI's postprocess (``sahi.postprocess.combine``: ``nms``,
``greedy_nmm``, ``nmm`` and their ``batched_*`` per-class forms, dense numpy backend, plus
the ``has_match`` re-check that SAHI's ``NMMPostprocess`` / ``GreedyNMMPostprocess`` apply
while merging), so that the same inputs keep and merge the same boxes:

* order: score descending, ties broken by x1, y1, x2, y2 ascending;
* overlap: float32 IoU, or IoS = intersection / area of the smaller box, 0 where the
  denominator is 0; two boxes match when ``overlap >= threshold``;
* nms: each kept box suppresses every box that matches it;
* greedy_nmm: each box not yet absorbed keeps itself and absorbs the later, not yet
  absorbed boxes that match *it*;
* nmm: as greedy_nmm, but an absorbed box also absorbs, into the same keeper, the later
  lower-scoring boxes that match *it* (transitive chains);
* merging a keeper's members: in turn, each member is fused only if it still matches
  (float64, ``>=``) the keeper's box grown so far, otherwise it is dropped; fusing takes
  the union box, the maximum score and the class of the top-scoring member.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from pycocotools import mask as coco_mask

from engine.detections import Detections

__all__ = [
    "MERGE_METHODS",
    "MERGE_METRICS",
    "Tile",
    "merge_detections",
    "pairwise_overlap",
    "tile_grid",
]

#: Ways `merge_detections` can combine overlapping detections.
MERGE_METHODS = ("nms", "nmm", "greedy_nmm", "none")
#: Overlap measures: intersection over union, or over the smaller box's area.
MERGE_METRICS = ("iou", "ios")


# ---------------------------------------------------------------------------------- tiles
@dataclass(frozen=True)
class Tile:
    """One window of an image.

    Args:
        x: Left edge of the window in image pixels.
        y: Top edge of the window in image pixels.
        width: Window width in pixels.
        height: Window height in pixels.

    Example:
        >>> Tile(0, 0, 64, 32).xyxy
        (0, 0, 64, 32)
    """

    x: int
    y: int
    width: int
    height: int

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        """The window as x1, y1, x2, y2 (x2, y2 exclusive)."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_float(value: object) -> bool:
    return isinstance(value, (float, np.floating))


def _starts(length: int, window: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride``, the last one snapped to the border."""
    if window >= length:
        return [0]
    last = length - window
    return [*range(0, last, stride), last]


def tile_grid(
    height: int,
    width: int,
    window: int | tuple[int, int],
    overlap: float | int = 0.2,
) -> list[Tile]:
    """Cut an image into overlapping windows of one size that cover it fully.

    Windows start every ``window - overlap`` pixels along each axis; the last row and
    column are moved back to end at the image border (overlapping their neighbour by more
    than ``overlap``), so every tile has the full window size. A window larger than the
    image along an axis shrinks to the image along that axis.

    Args:
        height: Image height in pixels (> 0).
        width: Image width in pixels (> 0).
        window: Window size: an int for a square window, or (height, width).
        overlap: A float in [0, 1) is a fraction of the window side (rounded to pixels per
            axis); an int >= 0 is pixels. It must leave a stride of at least one pixel.

    Returns:
        The tiles, row by row (top to bottom, left to right), without duplicates.

    Raises:
        ValueError: If an argument is not a valid number; the message names it.

    Example:
        >>> [t.xyxy for t in tile_grid(100, 150, 100, overlap=0.5)]
        [(0, 0, 100, 100), (50, 0, 150, 100)]
    """
    for name, value in (("height", height), ("width", width)):
        if not _is_int(value) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if _is_int(window):
        win_h = win_w = window
    elif isinstance(window, Sequence) and len(window) == 2 and all(_is_int(v) for v in window):
        win_h, win_w = window
    else:
        raise ValueError(f"window must be an int or a (height, width) pair of ints, got {window!r}")
    if win_h <= 0 or win_w <= 0:
        raise ValueError(f"window must be positive, got {window!r}")

    if _is_float(overlap) and 0.0 <= overlap < 1.0:
        over_h, over_w = round(overlap * win_h), round(overlap * win_w)
    elif _is_int(overlap) and overlap >= 0:
        over_h = over_w = int(overlap)
    else:
        raise ValueError(
            f"overlap must be a fraction in [0, 1) or whole pixels >= 0, got {overlap!r}"
        )
    if over_h >= win_h or over_w >= win_w:
        raise ValueError(
            f"overlap must be smaller than the window {window!r}, got {overlap!r} "
            f"({over_h}, {over_w} pixels)"
        )

    ys = _starts(int(height), int(win_h), int(win_h - over_h))
    xs = _starts(int(width), int(win_w), int(win_w - over_w))
    tile_h, tile_w = min(int(win_h), int(height)), min(int(win_w), int(width))
    return [Tile(x, y, tile_w, tile_h) for y in ys for x in xs]


# ---------------------------------------------------------------------------------- overlap
def _check_metric(metric: str) -> None:
    if metric not in MERGE_METRICS:
        raise ValueError(f"metric must be one of {MERGE_METRICS}, got {metric!r}")


def pairwise_overlap(a: np.ndarray, b: np.ndarray, metric: str = "iou") -> np.ndarray:
    """Overlap of every box in ``a`` with every box in ``b``.

    Computed in float32 like SAHI's dense backend. IoS divides the intersection by the
    area of the smaller of the two boxes. A pair whose denominator is 0 (degenerate
    boxes) has overlap 0.

    Args:
        a: (N, 4) xyxy boxes.
        b: (M, 4) xyxy boxes.
        metric: "iou" (intersection over union) or "ios" (intersection over smaller).

    Returns:
        (N, M) float32 overlaps in [0, 1].

    Raises:
        ValueError: If ``metric`` is unknown.

    Example:
        >>> pairwise_overlap(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 5, 5]]), "ios")
        array([[1.]], dtype=float32)
    """
    _check_metric(metric)
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    inter_w = np.maximum(
        np.float32(0),
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]),
    )
    inter_h = np.maximum(
        np.float32(0),
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]),
    )
    inter = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if metric == "iou":
        denom = area_a[:, None] + area_b[None, :] - inter
    else:
        denom = np.minimum(area_a[:, None], area_b[None, :])
    out = np.zeros(inter.shape, dtype=np.float32)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def _matches_grown(
    box: np.ndarray, others: np.ndarray, metric: str, threshold: float
) -> np.ndarray:
    """SAHI's ``has_match`` in float64, row-wise: does ``box[i]`` match ``others[i]``?"""
    inter_w = np.clip(
        np.minimum(box[:, 2], others[:, 2]) - np.maximum(box[:, 0], others[:, 0]), 0, None
    )
    inter_h = np.clip(
        np.minimum(box[:, 3], others[:, 3]) - np.maximum(box[:, 1], others[:, 1]), 0, None
    )
    inter = inter_w * inter_h
    area_a = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    ratio = np.full(inter.shape, -np.inf)
    np.divide(inter, denom, out=ratio, where=denom > 0)  # 0 / 0 is NaN in SAHI: no match
    return ratio >= threshold


# ---------------------------------------------------------------------------------- merges
def _score_order(xyxy: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by x1, y1, x2, y2 ascending (SAHI's order)."""
    return np.lexsort((xyxy[:, 3], xyxy[:, 2], xyxy[:, 1], xyxy[:, 0], -scores))


def _nms(xyxy: np.ndarray, scores: np.ndarray, metric: str, threshold: float) -> list[int]:
    """Kept indices of one class group, best first."""
    order = _score_order(xyxy, scores)
    if metric == "iou" and threshold > 0:
        # torchvision suppresses IoU > t; SAHI suppresses float32 IoU >= float32(t). The
        # scores become ranks so that torchvision visits boxes in exactly SAHI's order.
        below = float(np.nextafter(np.float64(np.float32(threshold)), -np.inf))
        ranks = np.empty(len(order), dtype=np.float32)
        ranks[order] = np.arange(len(order), 0, -1, dtype=np.float32)
        kept = torchvision.ops.nms(torch.from_numpy(xyxy), torch.from_numpy(ranks), below)
        return kept.tolist()
    matches = pairwise_overlap(xyxy, xyxy, metric) >= np.float32(threshold)
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in order:
        if not suppressed[i]:
            keep.append(int(i))
            suppressed |= matches[i]
    return keep


def _greedy_nmm(
    xyxy: np.ndarray, scores: np.ndarray, metric: str, threshold: float
) -> dict[int, list[int]]:
    """Keeper -> candidate members of one class group (SAHI's greedy_nmm)."""
    order = _score_order(xyxy, scores)
    matches = pairwise_overlap(xyxy, xyxy, metric) >= np.float32(threshold)
    used = np.zeros(len(order), dtype=bool)
    groups: dict[int, list[int]] = {}
    for pos, i in enumerate(order):
        if used[i]:
            continue
        later = order[pos + 1 :]
        members = later[~used[later] & matches[i, later]]
        used[members] = True
        groups[int(i)] = members.tolist()
    return groups


def _nmm(
    xyxy: np.ndarray, scores: np.ndarray, metric: str, threshold: float
) -> dict[int, list[int]]:
    """Keeper -> candidate members of one class group (SAHI's transitive nmm).

    Every box, absorbed or not, claims for its keeper the unclaimed boxes that match it
    and score strictly lower (or are exact duplicates of it), in index order.
    """
    order = _score_order(xyxy, scores)
    matches = pairwise_overlap(xyxy, xyxy, metric) >= np.float32(threshold)
    keeper_of = np.full(len(order), -1, dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for i in order:
        if keeper_of[i] < 0:
            keeper_of[i] = i
            groups[int(i)] = []
        claimable = (scores[i] > scores) | np.all(xyxy == xyxy[i], axis=1)
        claimed = np.flatnonzero(matches[i] & claimable & (keeper_of < 0))
        keeper_of[claimed] = keeper_of[i]
        groups[int(keeper_of[i])].extend(claimed.tolist())
    return groups


def _absorb(
    keeper: np.ndarray, members: np.ndarray, metric: str, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse ``members`` into ``keeper`` in turn, each only if it matches the grown box.

    Vectorized optimistically: assume every remaining member is fused, check each against
    the running union of those before it, and restart after the first one that fails.

    Returns:
        The fused float64 box and a bool mask of the members that were fused.
    """
    box = keeper.astype(np.float64)
    members = members.astype(np.float64)
    fused = np.zeros(len(members), dtype=bool)
    start = 0
    while start < len(members):
        rest = members[start:]
        grown = np.concatenate([box[None], rest[:-1]])
        grown[:, :2] = np.minimum.accumulate(grown[:, :2], axis=0)
        grown[:, 2:] = np.maximum.accumulate(grown[:, 2:], axis=0)
        ok = _matches_grown(grown, rest, metric, threshold)
        n_ok = len(rest) if ok.all() else int(np.argmin(ok))
        fused[start : start + n_ok] = True
        if n_ok:
            box = np.concatenate(
                [
                    np.minimum(box[:2], rest[:n_ok, :2].min(0)),
                    np.maximum(box[2:], rest[:n_ok, 2:].max(0)),
                ]
            )
        start += n_ok + 1
    return box, fused


def _merge_masks(rles: list[dict]) -> dict:
    """OR of RLE masks of one size."""
    sizes = {tuple(int(s) for s in r["size"]) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"masks_rle to merge must all have the same size, got {sorted(sizes)}")
    coco = [
        {
            "size": [int(s) for s in r["size"]],
            "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"],
        }
        for r in rles
    ]
    merged = coco_mask.merge(coco, intersect=0)
    return {"size": [int(s) for s in merged["size"]], "counts": merged["counts"]}


def _check_merge_args(method: str, metric: str, threshold: float) -> float:
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}")
    _check_metric(metric)
    if (
        isinstance(threshold, (bool, np.bool_))
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not 0.0 <= float(threshold) <= 1.0
    ):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def merge_detections(
    detections: Detections,
    method: str = "nms",
    metric: str = "iou",
    threshold: float = 0.5,
    class_agnostic: bool = False,
) -> Detections:
    """Remove or fuse overlapping detections, as SAHI does after sliced inference.

    Two boxes match when their overlap (``metric``) is at least ``threshold``; only boxes
    of the same class match unless ``class_agnostic``. Boxes are visited by score
    descending (ties: x1, y1, x2, y2 ascending).

    * ``"nms"``: keep a box, drop every box matching it (IoU uses torchvision's NMS).
    * ``"greedy_nmm"``: keep a box, and fuse into it the remaining boxes that match it.
    * ``"nmm"``: like greedy_nmm, but a fused box also pulls in the remaining lower-scoring
      boxes that match it, so chains A-B-C fuse even when A and C do not overlap.
    * ``"none"``: return ``detections`` unchanged.

    Fusing visits a keeper's candidates in order and fuses one only if it still matches
    the keeper's grown box (else it is dropped, as in SAHI). The fused detection has the
    union box, the maximum score, the class of the top-scoring member (in class-agnostic
    mode, with tied scores, the last tied member's, as in SAHI), the OR of the members'
    masks, and the keeper's keypoints and track id.

    Args:
        detections: Detections of one image (e.g. all tiles' detections in image pixels).
        method: One of `MERGE_METHODS`.
        metric: One of `MERGE_METRICS`: "iou", or "ios" (intersection over the smaller box).
        threshold: Overlap in [0, 1] at or above which two boxes match.
        class_agnostic: Match boxes of different classes too.

    Returns:
        The kept / fused detections sorted by score descending (``"none"``: the input).
        ``masks_rle`` stays a list (possibly empty) when the input had masks.

    Raises:
        ValueError: If ``method``, ``metric`` or ``threshold`` is invalid, or masks to fuse
            differ in size.

    Example:
        >>> d = Detections(np.array([[0, 0, 10, 10], [1, 0, 11, 10]]), [0.9, 0.8], [0, 0])
        >>> merge_detections(d, "greedy_nmm").xyxy.tolist()
        [[0.0, 0.0, 11.0, 10.0]]
    """
    threshold = _check_merge_args(method, metric, threshold)
    if method == "none":
        return detections
    n = len(detections)
    if n == 0:
        return detections[np.arange(0)]

    # 1) Run the method on each class group (one group when class-agnostic).
    xyxy, scores = detections.xyxy, detections.scores
    classes = np.zeros(n, np.int64) if class_agnostic else detections.class_idxs
    groups: dict[int, list[int]] = {}
    for cls in np.unique(classes):
        idx = np.flatnonzero(classes == cls)
        sub_xyxy, sub_scores = np.ascontiguousarray(xyxy[idx]), scores[idx]
        if method == "nms":
            groups.update({int(idx[k]): [] for k in _nms(sub_xyxy, sub_scores, metric, threshold)})
            continue
        run = _greedy_nmm if method == "greedy_nmm" else _nmm
        for keep, members in run(sub_xyxy, sub_scores, metric, threshold).items():
            groups[int(idx[keep])] = idx[members].tolist()

    # 2) Order the keepers by score (SAHI's tie-break).
    rank = np.empty(n, dtype=np.int64)
    rank[_score_order(xyxy, scores)] = np.arange(n)
    keepers = np.array(sorted(groups, key=lambda k: rank[k]), dtype=np.int64)
    out = detections[keepers]
    if method == "nms":
        return out

    # 3) Fuse each keeper's matching members: box, class, mask.
    out_xyxy, out_classes = out.xyxy.copy(), out.class_idxs.copy()
    out_masks = None if out.masks_rle is None else list(out.masks_rle)
    for row, keep in enumerate(keepers):
        members = np.asarray(groups[int(keep)], dtype=np.int64)
        if len(members) == 0:
            continue
        box, fused = _absorb(xyxy[keep], xyxy[members], metric, threshold)
        members = members[fused]
        if len(members) == 0:
            continue
        out_xyxy[row] = box
        tied = members[scores[members] >= scores[keep]]
        if len(tied):
            out_classes[row] = detections.class_idxs[tied[-1]]
        if out_masks is not None:
            out_masks[row] = _merge_masks([detections.masks_rle[i] for i in (keep, *members)])
    return Detections(
        xyxy=out_xyxy,
        scores=out.scores,
        class_idxs=out_classes,
        masks_rle=out_masks,
        keypoints=out.keypoints,
        track_ids=out.track_ids,
        data=out.data,
    )
