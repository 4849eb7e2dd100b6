"""Tile grid and detection merges (engine.tiling); no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detections import Detections
from engine.masks import decode_masks, encode_masks
from engine.tiling import (
    MERGE_METHODS,
    MERGE_METRICS,
    Tile,
    merge_detections,
    pairwise_overlap,
    tile_grid,
)

# ------------------------------------------------------------------------------- tile grid
GRID_CASES = [
    # height, width, window, overlap
    (100, 80, 640, 0.2),  # image smaller than the window
    (512, 512, 256, 0),  # exact multiple, no overlap
    (512, 512, 256, 64),  # exact multiple of the stride
    (479, 641, (128, 200), 0.25),  # odd sizes, rectangular window
    (33, 1000, 32, 5),  # one axis barely larger than the window
    (300, 90, (64, 640), 10),  # window wider than the image only along x
    (1, 1, 1, 0),
    (97, 203, 50, 49),  # stride of one pixel
]


def _axis_overlaps(starts: list[int], size: int) -> list[int]:
    return [a + size - b for a, b in zip(starts, starts[1:])]


@pytest.mark.parametrize("height,width,window,overlap", GRID_CASES)
def test_tile_grid_covers_image_with_full_size_tiles(height, width, window, overlap):
    tiles = tile_grid(height, width, window, overlap)
    win_h, win_w = (window, window) if isinstance(window, int) else window
    tile_h, tile_w = min(win_h, height), min(win_w, width)

    coverage = np.zeros((height, width), np.int32)
    for t in tiles:
        assert isinstance(t, Tile)
        assert (t.height, t.width) == (tile_h, tile_w)
        assert t.x >= 0 and t.y >= 0 and t.x + t.width <= width and t.y + t.height <= height
        coverage[t.y : t.y + t.height, t.x : t.x + t.width] += 1
    assert (coverage > 0).all()
    assert len(set(tiles)) == len(tiles)
    assert (tiles[0].x, tiles[0].y) == (0, 0)
    assert tiles[-1].xyxy[2:] == (width, height)

    # row by row: y is non-decreasing, x increases within a row
    assert [t.y for t in tiles] == sorted(t.y for t in tiles)
    ys = sorted({t.y for t in tiles})
    xs = sorted({t.x for t in tiles})
    assert len(tiles) == len(xs) * len(ys)
    assert [t.x for t in tiles[: len(xs)]] == xs

    # neighbours overlap by exactly the overlap, the snapped last one by at least that
    for starts, win, size in ((ys, win_h, tile_h), (xs, win_w, tile_w)):
        want = round(overlap * win) if isinstance(overlap, float) else overlap
        gaps = _axis_overlaps(starts, size)
        assert all(g == want for g in gaps[:-1])
        assert all(g >= want for g in gaps[-1:])


def test_tile_grid_exact_layout():
    tiles = tile_grid(100, 250, 100, overlap=20)
    assert [t.xyxy for t in tiles] == [(0, 0, 100, 100), (80, 0, 180, 100), (150, 0, 250, 100)]
    assert tile_grid(512, 512, 256, 0) == [
        Tile(0, 0, 256, 256),
        Tile(256, 0, 256, 256),
        Tile(0, 256, 256, 256),
        Tile(256, 256, 256, 256),
    ]


def test_tile_grid_fraction_equals_pixels():
    assert tile_grid(700, 900, 200, 0.25) == tile_grid(700, 900, 200, 50)
    assert tile_grid(700, 900, (100, 200), 0.25) != tile_grid(700, 900, (100, 200), 25)
    # per axis: 0.25 of (100, 200) is (25, 50) pixels
    tiles = tile_grid(700, 900, (100, 200), 0.25)
    assert sorted({t.y for t in tiles})[:2] == [0, 75]
    assert sorted({t.x for t in tiles})[:2] == [0, 150]


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"height": 0}, "height"),
        ({"width": -5}, "width"),
        ({"height": 10.0}, "height"),
        ({"window": 0}, "window"),
        ({"window": (64, -1)}, "window"),
        ({"window": "64"}, "window"),
        ({"window": (64, 64, 64)}, "window"),
        ({"overlap": -1}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": 64}, "overlap"),  # not smaller than the window
        ({"overlap": 0.999}, "overlap"),  # rounds to the whole window
        ({"overlap": "0.2"}, "overlap"),
        ({"overlap": True}, "overlap"),
    ],
)
def test_tile_grid_rejects_bad_arguments(kwargs, name):
    args = {"height": 100, "width": 100, "window": 64, "overlap": 0.2, **kwargs}
    with pytest.raises(ValueError, match=name):
        tile_grid(**args)


# ------------------------------------------------------------------------------- overlap
def test_pairwise_overlap_iou_and_ios():
    big = np.array([[0, 0, 10, 10]], np.float32)
    boxes = np.array([[2.5, 0, 12.5, 10], [2, 2, 4, 4], [20, 20, 30, 30], [5, 5, 5, 9]])
    iou = pairwise_overlap(big, boxes, "iou")
    ios = pairwise_overlap(big, boxes, "ios")
    assert iou.shape == (1, 4) and iou.dtype == np.float32
    np.testing.assert_allclose(iou[0], [0.6, 0.04, 0, 0], atol=1e-7)
    np.testing.assert_allclose(ios[0], [0.75, 1.0, 0, 0], atol=1e-7)
    assert pairwise_overlap(np.zeros((0, 4)), boxes, "iou").shape == (0, 4)
    with pytest.raises(ValueError, match="metric"):
        pairwise_overlap(big, boxes, "giou")


# ------------------------------------------------------------------------------- merges
def _dets(boxes, scores, classes=None, **extra) -> Detections:
    classes = [0] * len(scores) if classes is None else classes
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), scores, classes, **extra)


A, B = [0, 0, 10, 10], [2.5, 0, 12.5, 10]  # IoU exactly 0.6


def test_nms_iou_keeps_higher_scoring():
    d = _dets([B, A], [0.8, 0.9])
    out = merge_detections(d, "nms", "iou", 0.5)
    assert out.xyxy.tolist() == [A] and out.scores.tolist() == pytest.approx([0.9])
    # SAHI suppresses at overlap >= threshold, so an IoU of exactly 0.6 is suppressed at 0.6
    assert len(merge_detections(d, "nms", "iou", 0.6)) == 1
    assert len(merge_detections(d, "nms", "ios", 0.75)) == 1
    both = merge_detections(d, "nms", "iou", 0.7)
    assert both.xyxy.tolist() == [A, B]  # sorted by score descending


def test_nms_is_class_wise_unless_agnostic():
    d = _dets([A, B], [0.9, 0.8], [0, 1])
    assert len(merge_detections(d, "nms")) == 2
    assert len(merge_detections(d, "greedy_nmm")) == 2
    assert merge_detections(d, "nms", class_agnostic=True).class_idxs.tolist() == [0]


def test_ios_catches_box_inside_box():
    small = [2, 2, 4, 4]
    d = _dets([small, [0, 0, 10, 10]], [0.95, 0.6], [3, 3])
    assert len(merge_detections(d, "nms", "iou", 0.5)) == 2
    out = merge_detections(d, "nms", "ios", 0.5)
    assert out.xyxy.tolist() == [small]
    fused = merge_detections(d, "greedy_nmm", "ios", 0.5)
    assert fused.xyxy.tolist() == [[0, 0, 10, 10]] and fused.scores.tolist() == pytest.approx(
        [0.95]
    )
    assert len(merge_detections(d, "greedy_nmm", "iou", 0.5)) == 2


def test_greedy_nmm_union_box_max_score_top_class():
    d = _dets(
        [B, A], [0.8, 0.9], [2, 1], track_ids=[7, 8], keypoints=np.arange(12).reshape(2, 2, 3)
    )
    out = merge_detections(d, "greedy_nmm", "iou", 0.5, class_agnostic=True)
    assert out.xyxy.tolist() == [[0, 0, 12.5, 10]]
    assert out.scores.tolist() == pytest.approx([0.9])
    assert out.class_idxs.tolist() == [1]
    assert out.track_ids.tolist() == [8]
    assert out.keypoints.tolist() == d.keypoints[1:].tolist()
    assert len(merge_detections(d, "greedy_nmm", "iou", 0.7, class_agnostic=True)) == 2


CHAIN = [[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]]  # A-B, B-C IoU 0.43; A-C 0.11


def test_nmm_merges_through_chains_greedy_does_not():
    d = _dets(CHAIN, [0.9, 0.8, 0.7])
    greedy = merge_detections(d, "greedy_nmm", "iou", 0.3)
    assert greedy.xyxy.tolist() == [[0, 0, 14, 10], [8, 0, 18, 10]]
    nmm = merge_detections(d, "nmm", "iou", 0.3)
    # C reaches A only through B; it is fused since it matches the grown A+B box (0.33)
    assert nmm.xyxy.tolist() == [[0, 0, 18, 10]]
    assert nmm.scores.tolist() == pytest.approx([0.9])


def test_nmm_drops_chain_member_that_misses_grown_box():
    # B claims C for A, but C's IoU with A+B = [0, 0, 15, 10] is 0.25 < 0.3: SAHI drops C
    d = _dets([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7])
    assert merge_detections(d, "nmm", "iou", 0.3).xyxy.tolist() == [[0, 0, 15, 10]]
    greedy = merge_detections(d, "greedy_nmm", "iou", 0.3)
    assert greedy.xyxy.tolist() == [[0, 0, 15, 10], [10, 0, 20, 10]]


def test_masks_are_merged_by_or():
    h, w = 12, 20
    masks = np.zeros((3, h, w), bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 2:10, 3:13] = True
    masks[2, 0:4, 15:20] = True
    d = _dets([A, B, [15, 0, 20, 4]], [0.9, 0.8, 0.5], masks_rle=encode_masks(masks))
    for method in ("greedy_nmm", "nmm"):
        out = merge_detections(d, method, "iou", 0.5)
        assert isinstance(out.masks_rle, list) and len(out.masks_rle) == 2
        got = decode_masks(out.masks_rle, h, w)
        np.testing.assert_array_equal(got[0], masks[0] | masks[1])
        np.testing.assert_array_equal(got[1], masks[2])
    kept = merge_detections(d, "nms")
    np.testing.assert_array_equal(decode_masks(kept.masks_rle, h, w), masks[[0, 2]])


def test_empty_none_and_bad_arguments():
    for method in MERGE_METHODS:
        for metric in MERGE_METRICS:
            out = merge_detections(Detections.empty(with_masks=True), method, metric)
            assert len(out) == 0 and out.masks_rle == []
        assert merge_detections(Detections.empty(), method).masks_rle is None
    d = _dets([A, B], [0.9, 0.8])
    assert merge_detections(d, "none") is d
    for kwargs, name in [
        ({"method": "soft_nms"}, "method"),
        ({"metric": "giou"}, "metric"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
    ]:
        with pytest.raises(ValueError, match=name):
            merge_detections(d, **kwargs)


def test_output_sorted_by_score():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], axis=1)
    d = _dets(boxes, rng.random(60), rng.integers(0, 3, 60))
    for method in ("nms", "nmm", "greedy_nmm"):
        out = merge_detections(d, method, "iou", 0.3)
        assert 0 < len(out) < len(d)
        assert (np.diff(out.scores) <= 0).all()


# ------------------------------------------------------------------------------- vs SAHI
@pytest.fixture(scope="module")
def sahi():
    """SAHI's postprocess functions (sahi is a dev dependency of the project)."""
    combine = pytest.importorskip("sahi.postprocess.combine")
    from sahi.postprocess.backends import set_postprocess_backend
    from sahi.prediction import ObjectPrediction

    set_postprocess_backend("numpy")
    return combine, ObjectPrediction


def _random_dets(seed: int, n: int, integer: bool) -> Detections:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(4, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.random(n)
    if integer:  # exact overlaps at the thresholds, tied scores, duplicate boxes
        boxes = np.round(boxes / 2) * 2
        scores = np.round(scores * 10) / 10
        boxes[: n // 10] = boxes[n // 10 : 2 * (n // 10)]
    return _dets(boxes, scores.astype(np.float32), rng.integers(0, 3, n))


def _rows(xyxy, scores, classes) -> list[tuple]:
    return sorted(
        (*np.float32(b).tolist(), float(np.float32(s)), int(c))
        for b, s, c in zip(xyxy, scores, classes)
    )


@pytest.mark.parametrize("method", ["nms", "greedy_nmm", "nmm"])
def test_matches_sahi_on_random_boxes(sahi, method):
    combine, object_prediction = sahi
    post = {
        "nms": combine.NMSPostprocess,
        "greedy_nmm": combine.GreedyNMMPostprocess,
        "nmm": combine.NMMPostprocess,
    }[method]
    for seed, integer in ((0, False), (1, True)):
        d = _random_dets(seed, 250, integer)
        preds = [
            object_prediction(bbox=b.tolist(), category_id=int(c), score=float(s))
            for b, s, c in zip(d.xyxy, d.scores, d.class_idxs)
        ]
        for metric in MERGE_METRICS:
            for threshold in (0.1, 0.5, 0.6):
                for agnostic in (False, True):
                    theirs = post(threshold, metric.upper(), agnostic)(list(preds))
                    ours = merge_detections(
                        d, method, metric, threshold, agnostic, sahi_compatible=True
                    )
                    want = _rows(
                        [p.bbox.to_xyxy() for p in theirs],
                        [p.score.value for p in theirs],
                        [p.category.id for p in theirs],
                    )
                    case = (seed, metric, threshold, agnostic)
                    assert _rows(ours.xyxy, ours.scores, ours.class_idxs) == want, case
