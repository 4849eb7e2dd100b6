"""Sliding-window prediction end to end: objects cut by tile borders are found once."""

from __future__ import annotations

import numpy as np
import pytest
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

import engine
from engine.models.reference import ColorBoxDetector

H, W = 700, 1000
WINDOW, OVERLAP = 256, 64  # objects are at most 40 px: each lies whole inside some tile


@pytest.fixture(scope="module")
def large_scene():
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, H, W, 120, min_side=10, max_side=40, gap=4)
    return draw_scene(H, W, boxes), boxes


def cut_by_a_tile_border(boxes) -> int:
    from engine.tiling import tile_grid

    tiles = tile_grid(H, W, WINDOW, OVERLAP)
    edges_x = {t.x for t in tiles} | {t.x + t.width for t in tiles}
    edges_y = {t.y for t in tiles} | {t.y + t.height for t in tiles}
    return sum(
        any(x1 < e < x2 for e in edges_x) or any(y1 < e < y2 for e in edges_y)
        for _, x1, y1, x2, y2 in boxes
    )


@pytest.mark.parametrize("merge,metric", [("nms", "ios"), ("greedy_nmm", "ios"), ("nmm", "ios")])
def test_every_object_is_found_exactly_once_across_tile_borders(
    reference_model, large_scene, merge, metric
):
    image, boxes = large_scene
    assert cut_by_a_tile_border(boxes) >= 20  # the scene really tests the borders
    prediction = reference_model.predict(
        image,
        sliding_window=True,
        window_size=WINDOW,
        overlap=OVERLAP,
        merge=merge,
        merge_metric=metric,
        batch_size=4,
        progress=False,
    )[0]
    assert len(prediction) == len(boxes)
    np.testing.assert_allclose(sort_xyxy(prediction.boxes), boxes_array(boxes), atol=1.0)


def test_fraction_overlap_img_size_and_full_image(reference_model, large_scene):
    image, boxes = large_scene
    prediction = reference_model.predict(
        image,
        sliding_window=True,
        window_size=(200, 300),
        overlap=0.3,
        merge="greedy_nmm",
        merge_metric="ios",
        img_size=(H, W),
        full_image=True,
        progress=False,
    )[0]
    assert len(prediction) == len(boxes)
    np.testing.assert_allclose(sort_xyxy(prediction.boxes), boxes_array(boxes), atol=1.0)


def test_masks_are_whole_across_tile_borders(ray_session):
    boxes = [("red", 230, 100, 290, 140), ("green", 10, 230, 50, 300)]  # both cross borders
    image = draw_scene(400, 400, boxes)
    with engine.deploy(ColorBoxDetector, with_masks=True) as model:
        prediction = model.predict(
            image,
            sliding_window=True,
            window_size=256,
            overlap=0.25,
            merge="greedy_nmm",
            merge_metric="ios",
            progress=False,
        )[0]
    assert len(prediction) == 2
    for (_, x1, y1, x2, y2), box, mask in zip(
        sorted(boxes, key=lambda b: (b[2], b[1])),
        sort_xyxy(prediction.boxes),
        prediction.masks[np.lexsort((prediction.boxes[:, 0], prediction.boxes[:, 1]))],
    ):
        expected = np.zeros((400, 400), bool)
        expected[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(mask, expected)
        np.testing.assert_allclose(box, [x1, y1, x2, y2])


def test_invalid_tiling_settings_are_clear_errors(reference_model):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="overlap of 300 pixels must be smaller"):
        reference_model.predict(image, sliding_window=True, window_size=256, overlap=300)
    with pytest.raises(ValueError, match=r"overlap as a fraction must be in \[0, 1\)"):
        reference_model.predict(image, sliding_window=True, overlap=1.5)
    with pytest.raises(ValueError, match="merge must be one of"):
        reference_model.predict(image, sliding_window=True, merge="average")
    with pytest.raises(ValueError, match="window_size"):
        reference_model.predict(image, sliding_window=True, window_size=-5)
