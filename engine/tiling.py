"""Sliced (tiled) inference helpers: the tile grid and the merge of per-tile detections.

`tile_grid` cuts an image into overlapping windows of one size; after each tile's
detections are shifted back into the full image (`Detections.shifted`) and concatenated
(`Detections.merge`), `merge_detections` removes or fuses the duplicates that the overlaps
produce.

By default the merges visit whole boxes first: a box that an inner tile edge cuts ranks
below the boxes no inner edge cuts, then boxes go by score; given each detection's tile,
the pieces of one object are recognised across tiles, so each object is found once with
its whole box even when a clipped piece scores as high as the whole object (see
`merge_detections`).

With ``sahi_compatible=True`` the merges reproduce SAHI's postprocess
(``sahi.postprocess.combine``: ``nms``, ``greedy_nmm``, ``nmm`` and their ``batched_*``
per-class forms, dense numpy backend, plus the ``has_match`` re-check that SAHI's
``NMMPostprocess`` / ``GreedyNMMPostprocess`` apply while merging), so that the same inputs
keep and merge the same boxes:

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
from pycocotools import mask as coco_mask

from engine.detections import Detections

__all__ = [
    "EDGE_TOLERANCE",
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
#: Pixels within which a box side lies on a tile edge, and two tiles' views of an object
#: agree (`merge_detections`).
EDGE_TOLERANCE = 2.0


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
def _ascending_key(values: np.ndarray) -> np.ndarray:
    """uint32 keys (as uint64) that sort as float32 ``values`` sort (equal values, equal keys).

    A float32's bits, read as an unsigned int with the sign bit flipped (all bits for a
    negative number), sort as the floats do.
    """
    bits = (np.asarray(values, np.float32) + np.float32(0)).view(np.uint32)  # -0.0 -> 0.0
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)


def _descending_key(scores: np.ndarray) -> np.ndarray:
    """uint32 keys (as uint64) that sort ascending as ``scores`` sort descending.

    A NaN score (a model's broken output) sorts last, below every number: it never
    suppresses or absorbs a box with a real score.
    """
    keys = np.uint64(0xFFFFFFFF) - _ascending_key(scores)
    return np.where(np.isnan(np.asarray(scores, np.float32)), np.uint64(0xFFFFFFFF), keys)


def _score_order(xyxy: np.ndarray, scores: np.ndarray, cut: np.ndarray | None = None) -> np.ndarray:
    """Indices by score descending, ties by x1, y1, x2, y2 ascending (SAHI's order).

    With ``cut``, every uncut box comes before every cut one. Equal to ``np.lexsort`` over
    those keys, with the six keys packed into three 64-bit ones (three times faster).
    """
    high32 = np.uint64(32)
    first = _descending_key(scores)
    if cut is not None:
        first |= np.asarray(cut, np.uint64) << high32
    top_left = (_ascending_key(xyxy[:, 0]) << high32) | _ascending_key(xyxy[:, 1])
    bottom_right = (_ascending_key(xyxy[:, 2]) << high32) | _ascending_key(xyxy[:, 3])
    return np.lexsort((bottom_right, top_left, first))


def _nms(xyxy: np.ndarray, scores: np.ndarray, metric: str, threshold: float) -> list[int]:
    """Kept indices of one class group, best first."""
    order = _score_order(xyxy, scores)
    if metric == "iou" and threshold > 0:
        # torchvision suppresses IoU > t; SAHI suppresses float32 IoU >= float32(t). The
        # scores become ranks so that torchvision visits boxes in exactly SAHI's order.
        below = float(np.nextafter(np.float64(np.float32(threshold)), -np.inf))
        ranks = np.empty(len(order), dtype=np.float32)
        ranks[order] = np.arange(len(order), 0, -1, dtype=np.float32)
        import torch  # here, not at the top: only SAHI's order needs it
        import torchvision

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


def _check_windows(
    windows: np.ndarray | Sequence | None, image_size: tuple[int, int] | None, n: int
) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    if windows is None:
        return None, None
    boxes = np.asarray(windows, dtype=np.float32)
    if boxes.size == 0:
        boxes = boxes.reshape(-1, 4)
    if boxes.shape != (n, 4):
        raise ValueError(
            f"windows must hold one tile box (x1, y1, x2, y2) per detection, shape ({n}, 4); "
            f"got shape {boxes.shape}"
        )
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(_is_int(v) and v > 0 for v in image_size)
    ):
        raise ValueError(
            f"image_size must be the (height, width) of the image the windows tile, "
            f"got {image_size!r}"
        )
    return boxes, (int(image_size[0]), int(image_size[1]))


def merge_detections(
    detections: Detections,
    method: str = "greedy_nmm",
    metric: str = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
    *,
    windows: np.ndarray | Sequence | None = None,
    image_size: tuple[int, int] | None = None,
    sahi_compatible: bool = False,
    edge_tolerance: float = EDGE_TOLERANCE,
) -> Detections:
    """Remove or fuse overlapping detections: the duplicates that overlapping tiles make.

    Two boxes match when their overlap (``metric``) is at least ``threshold``; only boxes
    of the same class match unless ``class_agnostic``.

    * ``"nms"``: keep a box, drop every box matching it.
    * ``"greedy_nmm"``: keep a box, and fuse into it the remaining boxes that match it.
    * ``"nmm"``: like greedy_nmm, but a fused box also pulls in the remaining boxes that
      match it, so chains A-B-C fuse even when A and C do not overlap.
    * ``"none"``: return ``detections`` unchanged.

    By default boxes are visited whole first: a box that touches an inner edge of its
    tile (an edge that is not the image border; within ``edge_tolerance`` pixels) ranks
    below every box that no inner edge cuts, then by score descending, then by x1, y1, x2,
    y2. With ``windows`` (each detection's tile) the pieces of one object are recognised
    before the method runs: two detections from different tiles, at least one of them cut,
    are views of one object when each, clipped to the other's tile, gives the same box
    (within ``edge_tolerance``). A piece of an object that some tile sees whole is dropped
    for it; an object that no tile sees whole (larger than the overlap) becomes the union
    of its pieces (highest score, masks OR-ed). So every method finds such an object once,
    with its whole box, whatever its scores. A fused detection has the union box, the
    highest score, the class, keypoints and track id of its top-ranked member, and the OR
    of the members' masks; a member joins a fused box only while it still matches the box
    grown so far.

    ``sahi_compatible=True`` reproduces ``sahi.postprocess.combine`` exactly instead
    (score order only, no piece recognition, ``nmm`` fuses only strictly lower scores;
    see the module docstring).

    Args:
        detections: Detections of one image (e.g. all tiles' detections in image pixels).
        method: One of `MERGE_METHODS`.
        metric: One of `MERGE_METRICS`: "iou", or "ios" (intersection over the smaller box).
        threshold: Overlap in [0, 1] at or above which two boxes match.
        class_agnostic: Match boxes of different classes too.
        windows: (N, 4) x1, y1, x2, y2 of the tile each detection was found in (image
            pixels), or None when the detections do not come from tiles.
        image_size: (height, width) of the tiled image; required with ``windows``.
        sahi_compatible: Merge exactly as SAHI does (``windows`` are then ignored).
        edge_tolerance: Pixels within which a box side lies on a tile edge and two views
            of an object's shared part are equal.

    Returns:
        The kept / fused detections sorted by score descending (``"none"``: the input).
        ``masks_rle`` stays a list (possibly empty) when the input had masks.

    Raises:
        ValueError: If ``method``, ``metric``, ``threshold``, ``windows``, ``image_size``
            or ``edge_tolerance`` is invalid, or masks to fuse differ in size.

    Example:
        >>> d = Detections(np.array([[0, 0, 10, 10], [1, 0, 11, 10]]), [0.9, 0.8], [0, 0])
        >>> merge_detections(d, "greedy_nmm").xyxy.tolist()
        [[0.0, 0.0, 11.0, 10.0]]
        >>> pieces = Detections(np.array([[400, 0, 512, 30], [410, 0, 600, 30]]), [0.9, 0.9],
        ...                     [0, 0])
        >>> tiles = np.array([[0, 0, 512, 512], [410, 0, 922, 512]])
        >>> merge_detections(pieces, "nms", "iou", windows=tiles, image_size=(512, 922)).xyxy
        array([[400.,   0., 600.,  30.]], dtype=float32)
    """
    threshold = _check_merge_args(method, metric, threshold)
    if not isinstance(sahi_compatible, bool):
        raise ValueError(f"sahi_compatible must be True or False, got {sahi_compatible!r}")
    if not (_is_float(edge_tolerance) or _is_int(edge_tolerance)) or not edge_tolerance >= 0:
        raise ValueError(f"edge_tolerance must be a number >= 0, got {edge_tolerance!r}")
    boxes, size = _check_windows(windows, image_size, len(detections))
    if method == "none":
        return detections
    if len(detections) == 0:
        return detections[np.arange(0)]
    if sahi_compatible:
        return _merge_sahi(detections, method, metric, threshold, class_agnostic)
    return _merge_whole_first(
        detections, method, metric, threshold, class_agnostic, boxes, size, float(edge_tolerance)
    )


# ------------------------------------------------------------------- whole-first merges
def _cut_by_inner_edge(
    xyxy: np.ndarray, windows: np.ndarray, image_size: tuple[int, int], tolerance: float
) -> np.ndarray:
    """Does a box lie on an edge of its tile that is not the image border?"""
    height, width = image_size
    x1, y1, x2, y2 = xyxy.T
    wx1, wy1, wx2, wy2 = windows.T
    return (
        ((wx1 > 0) & (x1 <= wx1 + tolerance))
        | ((wy1 > 0) & (y1 <= wy1 + tolerance))
        | ((wx2 < width) & (x2 >= wx2 - tolerance))
        | ((wy2 < height) & (y2 >= wy2 - tolerance))
    )


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each k, ``counts[k]`` entries: (k, 0), (k, 1), ... as two arrays."""
    owner = np.repeat(np.arange(len(counts)), counts)
    step = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, step


def _candidate_pairs(
    xyxy: np.ndarray, groups: np.ndarray, everything: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), each once, of one group whose boxes share an area (all with ``everything``).

    Boxes are hashed into a grid of square cells (about three times the median side, grown
    until no more than ~8 cells a box on average) and bucketed by (group, cell); two boxes
    pair in the cell that holds the top-left corner of their intersection, so each pair is
    found once. Cost grows with the pairs, not with N squared.
    """
    n = len(xyxy)
    if everything:
        i, j = np.triu_indices(n, 1)
    else:
        longest = np.maximum(xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1])
        cell = max(3.0 * float(np.partition(longest, n // 2)[n // 2]), 1.0)  # ~ the median
        origin = np.array([xyxy[:, 0].min(), xyxy[:, 1].min()], xyxy.dtype)
        while True:
            lo = np.floor((xyxy[:, :2] - origin) / cell).astype(np.int64)
            hi = np.maximum(np.ceil((xyxy[:, 2:] - origin) / cell).astype(np.int64) - 1, lo)
            span = hi - lo + 1
            per_box = span[:, 0] * span[:, 1]
            if per_box.sum() <= 8 * n + 64:
                break
            cell *= 2.0
        # every (box, cell it covers), bucketed by (group, cell)
        columns = int(hi[:, 0].max()) + 1
        cells = columns * (int(hi[:, 1].max()) + 1)
        group_rank = np.asarray(groups, np.int64) - int(groups.min())
        if int(group_rank.max()) >= n:  # sparse ids: number them densely
            group_rank = np.unique(groups, return_inverse=True)[1].reshape(-1)
        box, k = _ranges(per_box)
        key = group_rank[box] * cells + (lo[box, 1] + k // span[box, 0]) * columns
        key += lo[box, 0] + k % span[box, 0]
        if int(key.max()) < 1 << 16:
            key = key.astype(np.uint16)  # a radix sort
        by_key = np.argsort(key, kind="stable")
        box, key = box[by_key], key[by_key]
        # each pair of boxes in one bucket, kept in the cell of their intersection's corner
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
        run = np.diff(np.append(starts, len(key)))
        end = np.repeat(starts + run, run)
        first, step = _ranges(end - np.arange(len(key)) - 1)
        i, j = box[first], box[first + 1 + step]
        x1, y1, x2, y2 = (np.ascontiguousarray(xyxy[:, c]) for c in range(4))
        corner_x, corner_y = np.maximum(x1[i], x1[j]), np.maximum(y1[i], y1[j])
        meets = (np.minimum(x2[i], x2[j]) > corner_x) & (np.minimum(y2[i], y2[j]) > corner_y)
        meets = np.flatnonzero(meets)
        at_x = np.floor((corner_x[meets] - origin[0]) / cell).astype(np.int64)
        at_y = np.floor((corner_y[meets] - origin[1]) / cell).astype(np.int64)
        at = group_rank[i[meets]] * cells + at_y * columns + at_x
        meets = meets[at == key[first[meets]]]
        return i[meets], j[meets]
    same = groups[i] == groups[j]
    return i[same], j[same]


def _rowwise_overlap(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Float32 overlap of ``a[k]`` with ``b[k]``, as `pairwise_overlap` computes it."""
    inter_w = np.maximum(np.float32(0), np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]))
    inter_h = np.maximum(np.float32(0), np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]))
    inter = inter_w * inter_h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    out = np.zeros(inter.shape, dtype=np.float32)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def _clip(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.maximum(boxes[:, :2], windows[:, :2]), np.minimum(boxes[:, 2:], windows[:, 2:])], 1
    )


@dataclass
class _Stitched:
    """Detections after the pieces of each object were put together.

    ``rep[k]`` is the input detection that row k stands for (its class, keypoints, track
    id); ``pieces[k]`` lists the input detections row k was put together from (None: only
    ``rep[k]``; row k's mask is the OR of theirs).
    """

    rep: np.ndarray
    xyxy: np.ndarray
    scores: np.ndarray
    cut: np.ndarray
    pieces: dict[int, list[int]]


def _stitch(
    xyxy: np.ndarray,
    scores: np.ndarray,
    cut: np.ndarray,
    windows: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray],
    tolerance: float,
) -> _Stitched:
    """Recognise the pieces of each object across tiles (see `merge_detections`)."""
    n = len(xyxy)
    i, j = pairs
    # 1) two views of one object: different tiles, one cut, the same shared part
    sel = np.flatnonzero(cut[i] | cut[j])
    i, j = i[sel], j[sel]
    win_i, win_j = windows[i], windows[j]
    box_i, box_j = xyxy[i], xyxy[j]
    part_i, part_j = _clip(box_i, win_j), _clip(box_j, win_i)
    linked = (
        (win_i != win_j).any(1)
        & (part_i[:, 2:] > part_i[:, :2]).all(1)
        & (part_j[:, 2:] > part_j[:, :2]).all(1)
        & (np.abs(part_i - part_j).max(1) <= tolerance)
    )
    i, j = i[linked], j[linked]
    if len(i) == 0:
        return _Stitched(np.arange(n), xyxy, scores, cut, {})
    # 2) objects: connected views; a piece of an object seen whole somewhere is dropped
    label, size = _components(n, i, j)
    whole_seen = np.bincount(label, weights=(~cut).astype(np.float64), minlength=len(size)) > 0
    alone = size[label] == 1
    pieced = ~alone & ~whole_seen[label]
    keep = alone | ~cut
    # 3) objects seen whole nowhere: the union of their pieces, on the best piece's row
    if pieced.any():
        rank = _score_order(xyxy, scores)
        rank = rank[pieced[rank]]
        _, first = np.unique(label[rank], return_index=True)
        keep[rank[first]] = True
    rep = np.flatnonzero(keep)
    out_xyxy, out_scores, out_cut = xyxy[rep].copy(), scores[rep].copy(), cut[rep].copy()
    pieces: dict[int, list[int]] = {}
    rows = np.flatnonzero(pieced[rep])
    if len(rows):
        members = np.flatnonzero(pieced)
        members = members[np.argsort(label[members], kind="stable")]
        bounds = np.searchsorted(label[members], label[rep[rows]])
        ends = np.searchsorted(label[members], label[rep[rows]], side="right")
        for row, start, end in zip(rows.tolist(), bounds.tolist(), ends.tolist()):
            group = members[start:end]
            out_xyxy[row, :2] = xyxy[group, :2].min(0)
            out_xyxy[row, 2:] = xyxy[group, 2:].max(0)
            out_scores[row] = np.fmax.reduce(scores[group])  # a NaN score never wins
            out_cut[row] = False  # put together whole
            pieces[row] = group.tolist()
    return _Stitched(rep, out_xyxy, out_scores, out_cut, pieces)


def _components(n: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the undirected pairs (i, j): each node's label, each size.

    A label is the smallest node of its component (labels lie in [0, n); ``size`` has n
    entries, 0 for labels nobody has). Roots are hooked onto the smaller root across each
    edge and paths halved until every edge lies inside one component: a few vectorised
    rounds, cheaper than a sparse-graph library for the short chains tiles make.
    """
    parent = np.arange(n)
    while True:
        while True:
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand
        root_i, root_j = parent[i], parent[j]
        apart = root_i != root_j
        if not apart.any():
            break
        root_i, root_j = root_i[apart], root_j[apart]
        np.minimum.at(parent, np.maximum(root_i, root_j), np.minimum(root_i, root_j))
    return parent, np.bincount(parent, minlength=n)


def _stitched_pairs(
    st: _Stitched, n: int, pairs: tuple[np.ndarray, np.ndarray], classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The input's intersecting pairs as rows of ``st``, plus those of put-together rows."""
    m = len(st.rep)
    row_of = np.full(n, -1, np.int64)
    row_of[st.rep] = np.arange(m)
    grown = np.zeros(m, bool)
    grown[list(st.pieces)] = True
    i, j = row_of[pairs[0]], row_of[pairs[1]]
    ok = (i >= 0) & (j >= 0)
    ok[ok] = ~grown[i[ok]] & ~grown[j[ok]]
    more_i, more_j = [i[ok]], [j[ok]]
    for row in st.pieces:  # a union box meets boxes none of its pieces met
        box = st.xyxy[row]
        meets = (np.minimum(st.xyxy[:, 2:], box[2:]) > np.maximum(st.xyxy[:, :2], box[:2])).all(1)
        meets &= (classes[st.rep] == classes[st.rep[row]]) & (~grown | (np.arange(m) > row))
        meets[row] = False
        others = np.flatnonzero(meets)
        more_i.append(np.full(len(others), row, np.int64))
        more_j.append(others)
    return np.concatenate(more_i), np.concatenate(more_j)


def _keepers(method: str, order: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Each box's keeper (itself when kept; -1 when NMS drops it), visiting in ``order``.

    A box absorbs (or suppresses) only boxes later in the order. A group of boxes that all
    match each other goes to its first box at once; the other groups are walked in order.
    """
    m = len(order)
    keeper_of = np.arange(m)
    if len(i) == 0:
        return keeper_of
    pos = np.empty(m, np.int64)
    pos[order] = np.arange(m)
    label, size = _components(m, i, j)
    edges = np.bincount(label[i], minlength=len(size))
    clique = edges == size * (size - 1) // 2
    first_pos = np.full(len(size), m, np.int64)
    np.minimum.at(first_pos, label, pos)
    keeper_of = order[first_pos[label]]
    if method == "nms":
        keeper_of[clique[label] & (keeper_of != np.arange(m))] = -1
    walk = ~clique[label]
    if not walk.any():
        return keeper_of
    # the other groups, box by box in order
    sel = walk[i]
    src, dst = np.concatenate([i[sel], j[sel]]), np.concatenate([j[sel], i[sel]])
    by_src = np.argsort(src, kind="stable")
    ptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=m), out=ptr[1:])
    nbrs = dst[by_src]
    keeper_of[walk] = -2  # not yet reached
    for k in order[walk[order]].tolist():
        near = nbrs[ptr[k] : ptr[k + 1]]
        if method == "nms":
            if keeper_of[k] == -2:
                keeper_of[k] = k
                near = near[keeper_of[near] == -2]
                keeper_of[near] = -1
            continue
        if keeper_of[k] == -2:
            keeper_of[k] = k
        elif method == "greedy_nmm":
            continue
        near = near[(keeper_of[near] == -2) & (pos[near] > pos[k])]
        keeper_of[near] = keeper_of[k]
    return keeper_of


def _merge_whole_first(
    detections: Detections,
    method: str,
    metric: str,
    threshold: float,
    class_agnostic: bool,
    windows: np.ndarray | None,
    image_size: tuple[int, int] | None,
    tolerance: float,
) -> Detections:
    """`merge_detections` without ``sahi_compatible``: whole boxes first, pieces stitched."""
    n = len(detections)
    xyxy, scores = detections.xyxy, detections.scores
    classes = np.zeros(n, np.int64) if class_agnostic else detections.class_idxs
    # 1) which boxes an inner tile edge cuts, and the pieces of one object put together
    pairs = _candidate_pairs(xyxy, classes, everything=False)
    if windows is None:
        st = _Stitched(np.arange(n), xyxy, scores, np.zeros(n, bool), {})
    else:
        cut = _cut_by_inner_edge(xyxy, windows, image_size, tolerance)
        st = _stitch(xyxy, scores, cut, windows, pairs, tolerance)
    # 2) the method, visiting whole boxes first, then by score, then by box
    box = st.xyxy
    order = _score_order(box, st.scores, st.cut)
    if threshold <= 0:
        i, j = _candidate_pairs(box, classes[st.rep], everything=True)
    elif len(st.rep) < n:
        i, j = _stitched_pairs(st, n, pairs, classes)
    else:
        i, j = pairs  # the rows are the input's
    matched = _rowwise_overlap(box[i], box[j], metric) >= np.float32(threshold)
    keeper_of = _keepers(method, order, i[matched], j[matched])
    # 3) fuse each keeper's members in turn while they match the grown box
    out_xyxy, out_scores = box.copy(), st.scores.copy()
    rows = np.arange(len(box))
    if method != "nms":
        members = np.flatnonzero((keeper_of >= 0) & (keeper_of != rows))
        owner = keeper_of[members]
        inside = (box[members, :2] >= box[owner, :2]).all(1) & (
            box[members, 2:] <= box[owner, 2:]
        ).all(1)
        if not inside.all():
            pos = np.empty(len(order), np.int64)
            pos[order] = np.arange(len(order))
            for keep in np.unique(owner[~inside]).tolist():
                group = members[owner == keep]
                group = group[np.argsort(pos[group])]
                grown, fused = _absorb(box[keep], box[group], metric, threshold)
                out_xyxy[keep] = grown
                keeper_of[group[~fused]] = -1
            members = np.flatnonzero((keeper_of >= 0) & (keeper_of != rows))
        np.fmax.at(out_scores, keeper_of[members], st.scores[members])
    # 4) the output, by score descending (ties: the visiting order)
    keepers = np.flatnonzero(keeper_of == rows)
    pos = np.empty(len(order), np.int64)
    pos[order] = np.arange(len(order))
    by_score = (_descending_key(out_scores[keepers]) << np.uint64(32)) | pos[keepers].astype(
        np.uint64
    )
    keepers = keepers[np.argsort(by_score)]
    out = detections[st.rep[keepers]]
    masks = None
    if detections.masks_rle is not None:
        masks = _fused_masks(detections.masks_rle, st, keeper_of, keepers)
    return Detections(
        xyxy=out_xyxy[keepers],
        scores=out_scores[keepers],
        class_idxs=out.class_idxs,
        masks_rle=masks,
        keypoints=out.keypoints,
        track_ids=out.track_ids,
        data=out.data,
    )


def _fused_masks(
    rles: list[dict], st: _Stitched, keeper_of: np.ndarray, keepers: np.ndarray
) -> list[dict]:
    """Each kept row's mask: the OR of the masks of every input detection fused into it."""
    sources: dict[int, list[int]] = {int(k): [] for k in keepers}
    for row in np.flatnonzero(keeper_of >= 0).tolist():
        sources[int(keeper_of[row])].extend(st.pieces.get(row, [int(st.rep[row])]))
    return [
        rles[s[0]] if len(s) == 1 else _merge_masks([rles[k] for k in s])
        for s in (sources[int(k)] for k in keepers)
    ]


def _merge_sahi(
    detections: Detections, method: str, metric: str, threshold: float, class_agnostic: bool
) -> Detections:
    """SAHI's merge, exactly: score order, ties by box (see the module docstring)."""
    n = len(detections)
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
