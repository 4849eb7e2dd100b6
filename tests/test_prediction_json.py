"""The one `Prediction` JSON codec (engine.prediction_json) and the formats built on it."""

from __future__ import annotations

import json

import numpy as np

from connectors.formats.jsonl import prediction_to_jsonl
from connectors.journal import prediction_from_payload, prediction_payload
from engine import masks as mask_utils
from engine.detections import Detections
from engine.prediction import Prediction
from engine.prediction_json import prediction_from_json, prediction_to_json
from serve.schema import prediction_to_json as server_json

CLASSES = ["cat", "dog", "bird"]


def _rich() -> Prediction:
    masks = np.zeros((2, 12, 16), bool)
    masks[0, 1:4, 2:7] = True
    masks[1, 5:9, 8:15] = True
    detections = Detections(
        xyxy=[[2.25, 1.1, 7.0, 4.0], [8.0, 5.0, 15.0, 9.333]],
        scores=[0.91234567, 0.5],
        class_idxs=[2, 0],
        masks_rle=mask_utils.encode_masks(masks),
        keypoints=np.array([[[3, 2, 0.5]], [[9.5, 6, np.nan]]], np.float32),
        track_ids=[4, 7],
    )
    return Prediction(
        detections, CLASSES, "url", "clip.mp4", url="https://u:pw@h/clip.mp4?token=abc",
        frame_index=np.int64(30), timestamp=1.25, height=12, width=16, index=5,
        task="instance_segmentation",
    )  # fmt: skip


def test_exact_json_rebuilds_the_prediction_exactly():
    rich = _rich()
    data = json.loads(json.dumps(prediction_to_json(rich), allow_nan=False))
    back = prediction_from_json(data)
    np.testing.assert_array_equal(back.boxes, rich.boxes)  # float32 values, not rounded
    np.testing.assert_array_equal(back.scores, rich.scores)
    np.testing.assert_array_equal(back.keypoints, rich.keypoints)  # NaN travels as null
    np.testing.assert_array_equal(back.masks, rich.masks)
    np.testing.assert_array_equal(back.track_ids, [4, 7])
    assert back.classes == ["bird", "cat"] and back.class_names == CLASSES
    for name in ("source", "name", "url", "frame_index", "timestamp", "height", "width", "index"):
        assert getattr(back, name) == getattr(rich, name), name
    assert back.task == "instance_segmentation" and back.error is None
    assert type(data["frame_index"]) is int


def test_rounded_json_is_short_and_has_every_key():
    short = prediction_to_json(_rich(), rounded=True, self_contained=False)
    assert short["boxes"] == [[2.25, 1.1, 7.0, 4.0], [8.0, 5.0, 15.0, 9.33]]
    assert short["scores"] == [0.9123, 0.5]
    assert short["keypoints"][1] == [[9.5, 6.0, None]] and short["num_keypoints"] == 1
    assert "class_names" not in short and "task" not in short
    plain = prediction_to_json(Prediction(Detections.empty(), ["a"], timestamp=float("nan")))
    assert plain["masks"] is plain["keypoints"] is plain["track_ids"] is None
    assert plain["timestamp"] is None and plain["boxes"] == [] and plain["class_names"] == ["a"]
    empty = prediction_from_json(plain)
    assert len(empty) == 0 and empty.keypoints is None and empty.timestamp is None


def test_empty_keypoints_keep_their_count():
    p = Prediction(Detections.empty(num_keypoints=17), ["person"], task="keypoints")
    assert prediction_from_json(prediction_to_json(p)).keypoints.shape == (0, 17, 3)


def test_to_dict_server_jsonl_and_journal_speak_the_same_json():
    rich = _rich()
    exact = json.loads(json.dumps(prediction_to_json(rich)))
    assert (
        rich.to_dict()
        == server_json(rich)
        == prediction_to_json(rich, rounded=True, self_contained=False)
    )
    assert json.loads(prediction_to_jsonl(rich)) == exact
    payload = json.loads(json.dumps(prediction_payload(rich)))
    assert payload == {**exact, "url": "https://h/clip.mp4?token=REDACTED"}
    np.testing.assert_array_equal(prediction_from_payload(payload).boxes, rich.boxes)
