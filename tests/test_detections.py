"""Detections and RLE masks: pure functions, known answers."""

from __future__ import annotations

import numpy as np
import pytest

from engine.detections import Detections
from engine.masks import decode_masks, encode_masks, shift_mask


def test_shift_mask_equals_placing_the_pixels_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(1, 12, 2)
        height, width = rng.integers(1, 20, 2)
        dx, dy = (int(v) for v in rng.integers(-8, 20, 2))
        mask = rng.random((h, w)) > 0.5
        moved = shift_mask(encode_masks(mask[None])[0], dx, dy, int(height), int(width))
        expected = np.zeros((height, width), bool)
        for y, x in zip(*np.nonzero(mask)):
            if 0 <= y + dy < height and 0 <= x + dx < width:
                expected[y + dy, x + dx] = True
        np.testing.assert_array_equal(decode_masks([moved], height, width)[0], expected)


def test_merge_gives_maskless_parts_empty_masks():
    with_masks = Detections([[0, 0, 2, 2]], [0.9], [0], encode_masks(np.ones((1, 4, 4), bool)))
    without = Detections([[1, 1, 3, 3]], [0.8], [1])
    merged = Detections.merge([with_masks, without])
    assert len(merged) == 2 and len(merged.masks_rle) == 2
    assert merged.masks(4, 4)[1].sum() == 0


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="scores must have shape"):
        Detections([[0, 0, 1, 1]], [0.5, 0.6], [0])
    with pytest.raises(ValueError, match="xyxy must have shape"):
        Detections(np.zeros((2, 3)), [0.5, 0.6], [0, 1])


def test_arrow_round_trip_keeps_every_field():
    masks = encode_masks(np.eye(5, dtype=bool)[None].repeat(2, 0))
    d = Detections(
        [[0, 0, 5, 5], [1, 1, 4, 4]],
        [0.9, 0.4],
        [3, 1],
        masks,
        keypoints=np.arange(12, dtype=np.float32).reshape(2, 2, 3),
        track_ids=[7, 8],
    )
    back = Detections.from_arrow(d.to_arrow(), 5, 5)
    np.testing.assert_array_equal(back.xyxy, d.xyxy)
    np.testing.assert_array_equal(back.masks(5, 5), d.masks(5, 5))
    np.testing.assert_array_equal(back.keypoints, d.keypoints)
    np.testing.assert_array_equal(back.track_ids, [7, 8])
