"""The one path from items to Predictions (engine.item_prediction), without Ray."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scenes import boxes_array, draw_scene, sort_xyxy

from engine.inference import ImageResult, predict_images
from engine.item_prediction import decode_items, item_prediction, predict_decoded
from engine.models.reference import ColorBoxDetector
from engine.settings import ModelInfo, validate_settings
from engine.sources.items import Item

BOXES = [("red", 3, 4, 20, 18), ("blue", 30, 10, 52, 40)]


def test_every_item_gets_one_prediction_in_order_with_its_error(tmp_path):
    adapter = ColorBoxDetector()
    adapter.load("cpu")
    info = ModelInfo.of(adapter)
    settings = validate_settings({}, info)
    scene = draw_scene(48, 64, BOXES)
    Image.fromarray(scene).save(tmp_path / "scene.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = [
        Item(0, "file", "scene.png", path=str(tmp_path / "scene.png")),
        Item(1, "file", "broken.png", path=str(tmp_path / "broken.png")),
        Item(2, "array", "array_2", pixels=scene.tobytes(), shape=scene.shape),
        Item(3, "url", "gone.jpg", url="http://h/gone.jpg", error="http://h/gone.jpg: HTTP 404"),
    ]
    calls = []

    def predict(images):
        calls.append(len(images))
        return predict_images(adapter, images, settings)

    got = predict_decoded(decode_items(items, settings), predict, info.classes, info.task)
    assert calls == [2]  # one model call, for the two images that decoded
    assert [p.index for p in got] == [0, 1, 2, 3]
    for found in (got[0], got[2]):
        np.testing.assert_array_equal(sort_xyxy(found.boxes), boxes_array(BOXES))
        assert (found.height, found.width, found.error) == (48, 64, None)
        assert found.class_names == info.classes
    assert got[0].path == str(tmp_path / "scene.png") and got[0].image is None
    np.testing.assert_array_equal(got[2].image, scene)  # an in-memory item lends its image
    assert "broken.png" in got[1].error and (got[1].height, got[1].width) == (0, 0)
    assert got[3].error.endswith("HTTP 404") and got[3].url == "http://h/gone.jpg"
    assert all(len(p) == 0 for p in (got[1], got[3]))


def test_a_model_failure_stays_with_its_item():
    item = Item(7, "url", "a.jpg", url="http://h/a.jpg", dataset="ds")
    failed = item_prediction(item, ImageResult(None, "model failed"), (10, 20), ["x"], "detection")
    assert (failed.index, failed.source, failed.name, failed.dataset) == (7, "url", "a.jpg", "ds")
    assert (failed.height, failed.width, failed.error, len(failed)) == (10, 20, "model failed", 0)
    row = failed.to_row()
    assert row["url"] == "http://h/a.jpg" and row["frame_index"] is None and row["xyxy"] == []
