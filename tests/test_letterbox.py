"""``letterbox=True``: img_size keeps the aspect ratio, as Ultralytics does (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from scenes import boxes_array, draw_scene, sort_xyxy

from engine.inference import LETTERBOX_GRAY, letterbox_image, predict_images
from engine.models.reference import ColorBoxDetector
from engine.settings import ModelInfo, check_settings, validate_settings

H, W = 60, 160  # a wide image: stretched to a square its boxes would be squashed 2.7x
BOXES = [("red", 10, 8, 40, 38), ("green", 100, 20, 150, 55)]


def test_the_image_is_scaled_to_fit_and_centred_on_gray():
    padded, placed = letterbox_image(draw_scene(H, W, BOXES), (64, 64))
    assert padded.shape == (64, 64, 3)
    assert placed == (0, 20, 24, 64)  # 160 -> 64 wide, 60 -> 24 high, 20 rows above
    assert (padded[:20] == LETTERBOX_GRAY).all() and (padded[44:] == LETTERBOX_GRAY).all()
    assert not (padded[20:44] == LETTERBOX_GRAY).all()


@pytest.mark.parametrize("with_masks", [False, True])
def test_objects_come_back_in_original_pixels(with_masks):
    model = ColorBoxDetector(with_masks=with_masks)
    model.load("cpu")
    settings = validate_settings(
        {"img_size": 96, "letterbox": True, "progress": False}, ModelInfo.of(model)
    )
    (result,) = predict_images(model, [draw_scene(H, W, BOXES)], settings)
    found = result.detections
    # 0.6x scale: a pixel of the model's input is 1.7 original pixels
    np.testing.assert_allclose(sort_xyxy(found.xyxy), boxes_array(BOXES), atol=2.5)
    if with_masks:
        masks = found.masks(H, W)
        assert masks.shape == (2, H, W)
        for mask, box in zip(masks, found.xyxy):
            rows, cols = np.nonzero(mask)
            assert abs(rows.min() - box[1]) <= 2 and abs(cols.max() + 1 - box[2]) <= 2


def test_through_predict(reference_model):
    (got,) = reference_model.predict(
        draw_scene(H, W, BOXES), img_size=(48, 96), letterbox=True, progress=False
    )
    assert sorted(got.classes) == ["green", "red"]
    np.testing.assert_allclose(sort_xyxy(got.boxes), boxes_array(BOXES), atol=2.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"letterbox": True}, "letterbox=True needs img_size"),
        ({"letterbox": True, "img_size": 64, "sliding_window": True}, "whole images"),
    ],
)
def test_letterbox_without_a_size_or_with_tiles_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        check_settings(options)
