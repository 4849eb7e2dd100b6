"""Picsellia's monitoring bodies, pure: ``raw_predictions`` parsed back by the SDK's own models.

No Ray, no network: predictions with known boxes, masks and classes go through
`connectors.picsellia.format`, and each body is validated by
``picsellia.types.schemas_prediction`` (the models the SDK builds ``raw_predictions`` with).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectors.picsellia.exporter import PicselliaExporter
from connectors.picsellia.format import (
    box_tlbr,
    label_ids_from_labels,
    mask_polygon,
    monitoring_body,
    monitoring_filename,
    prediction_key,
    raw_predictions,
)
from engine.detections import Detections
from engine.masks import encode_masks
from engine.plugins import MonitoredImage
from engine.prediction import Prediction

CLASSES = ["car", "person", "bike"]
LABEL_IDS = {"car": 3, "person": 7, "bike": 9}


def _schemas():
    from picsellia.types import schemas_prediction

    return schemas_prediction


def _prediction(task: str = "detection", masks: np.ndarray | None = None) -> Prediction:
    det = Detections(
        np.array([[10.4, 20.6, 50, 60], [0, 0, 5.5, 4.49]], np.float32),
        np.array([0.875, 0.5], np.float32),
        np.array([0, 1]),
        masks_rle=None if masks is None else encode_masks(masks),
    )
    return Prediction(det, CLASSES, name="a.png", height=80, width=100, task=task)


def test_detection_boxes_are_integer_top_left_bottom_right_and_classes_are_label_ids():
    raw = raw_predictions(_prediction(), LABEL_IDS)
    parsed = _schemas().DetectionPredictionFormat.model_validate(raw)
    assert raw["detection_boxes"] == [[21, 10, 60, 50], [0, 0, 4, 6]]
    assert parsed.detection_boxes == raw["detection_boxes"]
    assert parsed.detection_classes == [3, 7]
    assert parsed.detection_scores == [0.875, 0.5]
    assert box_tlbr([10.4, 20.6, 50, 60]) == [21, 10, 60, 50]


def test_labels_of_a_model_version_give_the_ids():
    assert label_ids_from_labels({"1": "car", "2": "person"}) == {"car": 1, "person": 2}
    with pytest.raises(ValueError, match="'x'.*not an integer"):
        label_ids_from_labels({"x": "car"})


def test_segmentation_polygons_follow_the_masks():
    masks = np.zeros((2, 80, 100), bool)
    masks[0, 20:60, 10:50] = True  # a rectangle: its four corners
    raw = raw_predictions(_prediction("instance_segmentation", masks), LABEL_IDS)
    parsed = _schemas().SegmentationPredictionFormat.model_validate(raw)
    assert sorted(map(tuple, parsed.detection_masks[0])) == [(10, 20), (10, 59), (49, 20), (49, 59)]
    # an empty mask becomes its box's corners, [x, y] pairs
    assert parsed.detection_masks[1] == [[0, 0], [6, 0], [6, 4], [0, 4]]
    assert parsed.detection_classes == [3, 7]
    assert "detection_boxes" not in raw  # the SDK's model drops the deprecated field


def test_polygon_of_an_l_shape_fills_back_to_the_mask():
    import cv2

    mask = np.zeros((30, 30), bool)
    mask[5:20, 5:10] = True
    mask[15:20, 5:25] = True
    polygon = mask_polygon(mask, [5, 5, 25, 20])
    assert {(5, 5), (9, 5), (24, 19), (5, 19)} <= set(map(tuple, polygon))
    filled = np.zeros((30, 30), np.uint8)
    cv2.fillPoly(filled, [np.array(polygon, np.int32)], 1)
    np.testing.assert_array_equal(filled.astype(bool), mask)


def test_classification_sends_classes_and_scores():
    raw = raw_predictions(_prediction("classification"), LABEL_IDS)
    parsed = _schemas().ClassificationPredictionFormat.model_validate(raw)
    assert (parsed.detection_classes, parsed.detection_scores) == ([3, 7], [0.875, 0.5])
    assert "detection_boxes" not in raw


def test_an_unknown_class_and_an_unsupported_task_are_refused_by_name():
    with pytest.raises(ValueError, match="class 'person' is not a label"):
        raw_predictions(_prediction(), {"car": 1})
    with pytest.raises(ValueError, match="not task 'keypoints'"):
        raw_predictions(_prediction("keypoints"), LABEL_IDS)


def test_monitoring_body_has_every_field_and_the_shadow():
    shadow = _prediction()
    record = MonitoredImage(
        key="req-1:0",
        prediction=_prediction(),
        latency_s=0.0125,
        timestamp=1_700_000_000.5,
        image=b"\x89PNG...",
        content_type="image/png",
        source="camera-3",
        tags=["night"],
        shadow=shadow,
        shadow_latency_s=0.02,
    )
    body = monitoring_body(record, LABEL_IDS, shadow_label_ids={"car": 1, "person": 2})
    assert "image" not in body
    assert body["filename"] == "a.png"  # the image's name (a batch job passes unique ones)
    unique = monitoring_filename("a.png", "req-1:0", "IMAGE/PNG")
    assert unique.startswith("a_") and unique.endswith(".png")
    assert monitoring_body(record, LABEL_IDS, filename=unique)["filename"] == unique
    assert (body["content_type"], body["height"], body["width"]) == ("IMAGE/PNG", 80, 100)
    assert (body["latency"], body["timestamp"]) == (0.0125, 1_700_000_000.5)
    assert (body["source"], body["tags"]) == ("camera-3", ["night"])
    assert body["raw_predictions"]["detection_classes"] == [3, 7]
    assert body["shadow_latency"] == 0.02
    assert body["shadow_raw_predictions"]["detection_classes"] == [1, 2]
    _schemas().DetectionPredictionFormat.model_validate(body["shadow_raw_predictions"])
    json.dumps(body)  # JSON as it is
    plain = monitoring_body(MonitoredImage("k", _prediction(), 0.1, 5.0), LABEL_IDS)
    assert "shadow_raw_predictions" not in plain and "source" not in plain
    with pytest.raises(ValueError, match="webp"):
        monitoring_body(
            MonitoredImage("k", _prediction(), 0.1, 5.0, content_type="image/webp"), LABEL_IDS
        )


def test_filenames_are_unique_per_key_and_stable():
    one = Prediction(Detections.empty(), CLASSES, source="file", path="/x/a.png", name="a.png")
    two = Prediction(Detections.empty(), CLASSES, source="file", path="/y/a.png", name="a.png")
    keys = prediction_key(one), prediction_key(two)
    assert keys[0] != keys[1]
    names = [monitoring_filename("a.png", k, "IMAGE/PNG") for k in keys]
    assert names[0] != names[1]
    assert names[0] == monitoring_filename("a.png", keys[0], "IMAGE/PNG")


def test_export_writes_one_body_per_image_that_the_sdk_parses(tmp_path):
    exporter = PicselliaExporter(tmp_path, CLASSES, "detection")
    first = _prediction()
    first.latency_ms = 12.5
    second = _prediction()
    second.name, second.index = "b.jpg", 1
    failed = Prediction(Detections.empty(), CLASSES, name="c.png", error="unreadable")
    for prediction in (first, second, failed):
        exporter.write(prediction)
    summary = exporter.close()
    assert summary["files"] == ["picsellia.jsonl"] and summary["images"] == 2
    assert summary["errors"] == [{"name": "c.png", "error": "unreadable"}]
    assert not (tmp_path / "picsellia.jsonl.partial").exists()
    lines = [json.loads(t) for t in (tmp_path / "picsellia.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all("image" not in line for line in lines)
    parsed = [
        _schemas().DetectionPredictionFormat.model_validate(x["raw_predictions"]) for x in lines
    ]
    assert parsed[0].detection_classes == [1, 2]  # positions + 1 without a deployment
    assert parsed[0].detection_boxes == [[21, 10, 60, 50], [0, 0, 4, 6]]
    assert (lines[0]["latency"], lines[1]["latency"]) == (0.0125, 0.0)
    assert [line["content_type"] for line in lines] == ["IMAGE/PNG", "IMAGE/PNG"]
    assert lines[1]["timestamp"] > lines[0]["timestamp"]
    assert lines[0]["filename"].startswith("a_") and lines[1]["filename"].startswith("b_")
    with pytest.raises(ValueError, match="keypoints"):
        PicselliaExporter(tmp_path, CLASSES, "keypoints")
