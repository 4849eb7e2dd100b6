"""Large in-memory images go to the model workers through Ray's object store, once."""

from __future__ import annotations

import numpy as np
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

from engine.sources.resolve import resolve_input
from engine.stored_images import STORED_IMAGE_BYTES, fetch_stored, store_large_images

#: Larger than STORED_IMAGE_BYTES as RGB (3.6 MB), so it travels by reference.
LARGE_HW = (1000, 1200)


def scene(height: int, width: int, seed: int, count: int = 6):
    boxes = random_boxes(np.random.default_rng(seed), height, width, count, 8, 60)
    return draw_scene(height, width, boxes), boxes


def assert_found(prediction, boxes) -> None:
    assert prediction.error is None, prediction.error
    np.testing.assert_allclose(sort_xyxy(prediction.boxes), boxes_array(boxes))


def test_only_large_images_within_the_limit_are_stored_and_read_back_uncopied(ray_session):
    large, _ = scene(*LARGE_HW, seed=1)
    small, _ = scene(60, 80, seed=2)
    items = resolve_input([small, large, large]).items
    assert len(items[1].pixels) >= STORED_IMAGE_BYTES > len(items[0].pixels)
    limit = LARGE_HW[0] * LARGE_HW[1]
    kept, stored = store_large_images(items[:2], max_pixels=limit)
    assert list(stored) == [1]
    assert kept[0] == items[0]  # small: still in its item
    assert kept[1].pixels is None and kept[1].shape == items[1].shape
    assert stored[1].shape == (*LARGE_HW, 3)
    # over the job's pixel limit: left in its item, whose decode names the limit
    over, none = store_large_images(items[2:], max_pixels=limit - 1)
    assert none == {} and over[0].pixels is not None
    fetched_small, fetched_large = fetch_stored([small, stored[1]])
    assert fetched_small is small
    np.testing.assert_array_equal(fetched_large, large)
    assert not fetched_large.flags.writeable  # read where it lies in the object store


def test_large_and_small_arrays_give_their_known_boxes_whole_or_tiled(reference_model):
    large, large_boxes = scene(*LARGE_HW, seed=3)
    small, small_boxes = scene(90, 120, seed=4)
    for options in ({}, {"sliding_window": True, "window_size": 512, "overlap": 0.25}):
        predictions = reference_model.predict([large, small, large], progress=False, **options)
        assert [p.name for p in predictions] == ["array_0", "array_1", "array_2"]
        for prediction, boxes, image in zip(
            predictions, (large_boxes, small_boxes, large_boxes), (large, small, large)
        ):
            assert_found(prediction, boxes)
            assert (prediction.height, prediction.width) == image.shape[:2]
            np.testing.assert_array_equal(prediction.load_image(), image)


def test_a_detached_session_predicts_stored_images_and_names_one_over_the_limit(
    reference_model,
):
    large, boxes = scene(*LARGE_HW, seed=5)
    huge = np.zeros((1100, 1200, 3), np.uint8)
    session = reference_model.predict_detached([large, huge], max_pixels=LARGE_HW[0] * LARGE_HW[1])
    found, failed = list(session)
    assert_found(found, boxes)
    assert failed.error is not None and "array_1" in failed.error
    assert "above the limit" in failed.error
