"""Predictions to and from supervision's Detections (issue 17: what supervision users expect)."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from engine.detections import Detections
from engine.masks import encode_masks
from engine.prediction import Prediction

CLASSES = ["red", "green", "blue"]


def known_prediction() -> Prediction:
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 2:10, 3:12] = True
    masks[1, 15:28, 20:39] = True
    detections = Detections(
        xyxy=np.array([[3, 2, 12, 10], [20, 15, 39, 28]], np.float32),
        scores=np.array([0.9, 0.6], np.float32),
        class_idxs=np.array([2, 0]),
        masks_rle=encode_masks(masks),
        track_ids=np.array([7, 8]),
    )
    return Prediction(
        detections, CLASSES, name="a.png", height=30, width=40, task="instance_segmentation"
    )


def test_to_supervision_carries_boxes_scores_classes_masks_and_tracks():
    prediction = known_prediction()
    converted = prediction.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == 2
    np.testing.assert_array_equal(converted.xyxy, prediction.boxes)
    np.testing.assert_array_equal(converted.confidence, prediction.scores)
    assert converted.class_id.tolist() == [2, 0]
    assert converted.tracker_id.tolist() == [7, 8]
    assert converted.data["class_name"].tolist() == ["blue", "red"]
    np.testing.assert_array_equal(converted.mask, prediction.masks)
    # supervision's own tools work on it: a filter, and an annotator drawing its boxes
    assert converted[converted.confidence > 0.8].class_id.tolist() == [2]
    drawn = sv.BoxAnnotator(thickness=1).annotate(np.zeros((30, 40, 3), np.uint8), converted)
    assert drawn[2, 3:12].any() and not drawn[0:2].any()


def test_from_supervision_round_trips_and_names_bad_class_ids():
    prediction = known_prediction()
    back = Prediction.from_supervision(prediction.to_supervision(), CLASSES, name="a.png")
    np.testing.assert_array_equal(back.boxes, prediction.boxes)
    np.testing.assert_array_equal(back.scores, prediction.scores)
    assert back.classes == ["blue", "red"] and back.track_ids.tolist() == [7, 8]
    assert (back.height, back.width, back.task) == (30, 40, "instance_segmentation")
    np.testing.assert_array_equal(back.masks, prediction.masks)

    boxes_only = sv.Detections(xyxy=np.array([[1.0, 1.0, 5.0, 5.0]]), class_id=np.array([1]))
    plain = Prediction.from_supervision(boxes_only, CLASSES, height=8, width=8)
    assert plain.classes == ["green"] and plain.scores.tolist() == [1.0] and plain.masks is None

    with pytest.raises(ValueError, match="class_id 3 is outside the 3 class names"):
        Prediction.from_supervision(
            sv.Detections(xyxy=np.array([[1.0, 1.0, 5.0, 5.0]]), class_id=np.array([3])), CLASSES
        )
    with pytest.raises(ValueError, match="without class_id"):
        Prediction.from_supervision(sv.Detections(xyxy=np.array([[1.0, 1.0, 5.0, 5.0]])), CLASSES)


def test_a_failed_prediction_is_not_converted():
    failed = Prediction(Detections.empty(), CLASSES, name="bad.png", error="cannot decode image")
    with pytest.raises(ValueError, match="bad.png: no objects to convert: cannot decode image"):
        failed.to_supervision()
