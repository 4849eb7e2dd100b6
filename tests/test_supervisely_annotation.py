from __future__ import annotations

import base64
import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from connectors.supervisely.annotation import (
    bitmap_to_mask,
    box_to_rectangle,
    mask_to_bitmap,
    prediction_to_supervisely,
    supervisely_meta,
    supervisely_to_detections,
)
from engine import masks as mask_utils
from engine.detections import Detections
from engine.prediction import Prediction

H, W = 50, 70
CLASSES = ["__background__", "car", "N/A", "person", "N/A"]


def _prediction(boxes, class_idxs, scores=None, masks=None, keypoints=None, **kwargs):
    n = len(boxes)
    detections = Detections(
        xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
        scores=np.full(n, 0.87654, np.float32) if scores is None else np.asarray(scores),
        class_idxs=np.asarray(class_idxs, np.int64),
        masks_rle=None if masks is None else mask_utils.encode_masks(masks),
        keypoints=keypoints,
    )
    return Prediction(
        detections=detections,
        class_names=CLASSES,
        name="x.png",
        height=H,
        width=W,
        image=np.zeros((H, W, 3), np.uint8),
        **kwargs,
    )


def test_integer_box_round_trip_is_exact():
    boxes = [[10, 20, 50, 40], [0, 0, W, H], [3, 4, 4, 5]]
    pred = _prediction(boxes, [1, 3, 1], scores=[0.5, 0.25, 1.0])
    ann = prediction_to_supervisely(pred)
    assert ann["size"] == {"height": H, "width": W}
    assert ann["description"] == "" and ann["tags"] == []
    objs = ann["objects"]
    assert [o["geometryType"] for o in objs] == ["rectangle"] * 3
    assert [o["classTitle"] for o in objs] == ["car", "person", "car"]
    assert objs[0]["points"] == {"exterior": [[10, 20], [49, 39]], "interior": []}
    assert objs[1]["points"]["exterior"] == [[0, 0], [W - 1, H - 1]]
    assert objs[2]["points"]["exterior"] == [[3, 4], [3, 4]]  # one pixel
    back = supervisely_to_detections(ann, CLASSES)
    assert back.xyxy.tolist() == boxes
    assert back.class_idxs.tolist() == [1, 3, 1]
    assert back.scores.tolist() == [0.5, 0.25, 1.0]
    assert back.masks_rle is None


def test_rectangle_rounding_and_clamping():
    assert box_to_rectangle(np.array([10.4, 20.6, 49.2, 39.9]), H, W) == (10, 20, 49, 39)
    assert box_to_rectangle(np.array([10.0001, 20, 50.0002, 40]), H, W) == (10, 20, 49, 39)
    assert box_to_rectangle(np.array([-5, -3, 500, 400]), H, W) == (0, 0, W - 1, H - 1)
    assert box_to_rectangle(np.array([12, 12, 12, 12]), H, W) == (12, 12, 12, 12)


def test_confidence_tags_rounded():
    pred = _prediction([[1, 1, 5, 5]], [1], scores=[0.123456])
    (obj,) = prediction_to_supervisely(pred)["objects"]
    assert obj["tags"] == [{"name": "confidence", "value": 0.1235}]


def test_bitmap_origin_and_mask_round_trip():
    masks = np.zeros((2, H, W), bool)
    masks[0, 5:12, 30:41] = True
    masks[0, 7, 45] = True  # a separate pixel widens the crop
    masks[1, 40:50, 0:3] = True
    pred = _prediction([[30, 5, 46, 12], [0, 40, 3, 50]], [1, 3], masks=masks)
    objs = prediction_to_supervisely(pred)["objects"]
    assert [o["geometryType"] for o in objs] == ["bitmap", "bitmap"]
    assert objs[0]["bitmap"]["origin"] == [30, 5]
    assert objs[1]["bitmap"]["origin"] == [0, 40]
    data = zlib.decompress(base64.b64decode(objs[0]["bitmap"]["data"]))
    with Image.open(io.BytesIO(data)) as png:
        assert png.size == (16, 7)  # cropped to the tight box, width x height
    for obj, mask in zip(objs, masks, strict=True):
        assert (bitmap_to_mask(obj["bitmap"], H, W) == mask).all()
    back = supervisely_to_detections(prediction_to_supervisely(pred), CLASSES)
    assert (back.masks(H, W) == masks).all()
    assert back.xyxy.tolist() == [[30, 5, 46, 12], [0, 40, 3, 50]]


def test_empty_mask_falls_back_to_rectangle_and_reads_back_as_box_mask():
    masks = np.zeros((2, H, W), bool)
    masks[0, 1:3, 1:4] = True
    pred = _prediction([[1, 1, 4, 3], [10, 10, 20, 15]], [1, 1], masks=masks)
    objs = prediction_to_supervisely(pred)["objects"]
    assert [o["geometryType"] for o in objs] == ["bitmap", "rectangle"]
    assert objs[1]["points"]["exterior"] == [[10, 10], [19, 14]]
    back = supervisely_to_detections(prediction_to_supervisely(pred), CLASSES)
    decoded = back.masks(H, W)
    assert (decoded[0] == masks[0]).all()
    assert decoded[1].sum() == 10 * 5 and decoded[1, 10:15, 10:20].all()


def test_mask_to_bitmap_rejects_empty_and_bitmap_clips_to_canvas():
    with pytest.raises(ValueError, match="empty"):
        mask_to_bitmap(np.zeros((4, 4), bool))
    small = np.ones((3, 3), bool)
    bitmap = mask_to_bitmap(small)
    bitmap["origin"] = [-1, 2]
    mask = bitmap_to_mask(bitmap, 4, 4)
    assert mask.sum() == 4 and mask[2:4, 0:2].all()


def test_bitmap_to_mask_accepts_grayscale_png():
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8), mode="L").save(buf, "PNG")
    bitmap = {"origin": [1, 1], "data": base64.b64encode(zlib.compress(buf.getvalue())).decode()}
    mask = bitmap_to_mask(bitmap, 3, 3)
    assert mask.tolist() == [[False] * 3, [False, False, True], [False, True, False]]


def test_unknown_class_raises_and_missing_confidence_is_one():
    ann = {
        "size": {"height": H, "width": W},
        "objects": [
            {
                "classTitle": "car",
                "geometryType": "rectangle",
                "points": {"exterior": [[1, 2], [3, 4]], "interior": []},
            },
            {"classTitle": "car_keypoints", "geometryType": "graph", "nodes": {}},
        ],
    }
    det = supervisely_to_detections(ann, CLASSES)
    assert det.scores.tolist() == [1.0] and det.xyxy.tolist() == [[1, 2, 4, 5]]
    ann["objects"][0]["classTitle"] = "boat"
    with pytest.raises(ValueError, match="boat"):
        supervisely_to_detections(ann, CLASSES)


def test_keypoint_graph_objects():
    keypoints = np.array([[[5.4, 6.6, 0.9], [7, 8, 0.0]], [[20, 21, 0.5], [22, 23, 0.7]]])
    pred = _prediction([[1, 1, 10, 10], [15, 15, 30, 30]], [3, 3], keypoints=keypoints)
    objs = prediction_to_supervisely(pred, keypoint_names=["nose", "eye"])["objects"]
    assert [o["geometryType"] for o in objs] == ["rectangle", "rectangle", "graph", "graph"]
    graph = objs[2]
    assert graph["classTitle"] == "person_keypoints"
    assert graph["nodes"] == {"nose": {"loc": [5, 7]}, "eye": {"loc": [7, 8], "disabled": True}}
    assert graph["tags"] == [{"name": "confidence", "value": 0.8765}]
    unnamed = prediction_to_supervisely(pred)["objects"][3]
    assert unnamed["nodes"] == {"0": {"loc": [20, 21]}, "1": {"loc": [22, 23]}}
    with pytest.raises(ValueError, match="keypoint_names"):
        prediction_to_supervisely(pred, keypoint_names=["nose"])
    # graph objects are skipped on the way back
    assert len(supervisely_to_detections(prediction_to_supervisely(pred), CLASSES)) == 2


def test_classification_gives_image_tags():
    pred = _prediction([[0, 0, W, H], [0, 0, W, H]], [3, 1], scores=[0.91234, 0.05])
    ann = prediction_to_supervisely(pred, task="classification")
    assert ann["objects"] == []
    assert ann["tags"] == [{"name": "person", "value": 0.9123}, {"name": "car", "value": 0.05}]


def test_errored_prediction_and_bad_task_raise():
    pred = _prediction([], [], error="cannot decode image")
    with pytest.raises(ValueError, match="x.png.*cannot decode image"):
        prediction_to_supervisely(pred)
    with pytest.raises(ValueError, match="task"):
        prediction_to_supervisely(_prediction([], []), task="segmentation")


def test_annotation_property_and_json_serialisable():
    masks = np.zeros((1, H, W), bool)
    masks[0, 2:5, 2:5] = True
    keypoints = np.array([[[3, 3, 1.0]]], np.float32)
    pred = _prediction([[2, 2, 5, 5]], [1], masks=masks, keypoints=keypoints)
    ann = pred.annotation
    assert json.loads(json.dumps(ann)) == ann
    assert ann == prediction_to_supervisely(pred)


def test_meta_colors_confidence_and_skipped_background_names():
    meta = supervisely_meta(CLASSES + ["car"])
    assert [c["title"] for c in meta["classes"]] == ["car", "person"]
    assert all(c["shape"] == "rectangle" for c in meta["classes"])
    colors = [c["color"] for c in meta["classes"]]
    assert all(len(c) == 7 and c[0] == "#" and int(c[1:], 16) >= 0 for c in colors)
    assert len(set(colors)) == len(colors)
    assert meta["tags"] == [{"name": "confidence", "value_type": "any_number", "color": "#888888"}]
    assert supervisely_meta(CLASSES) == meta  # deterministic, duplicates dropped
    assert json.loads(json.dumps(meta)) == meta


def test_meta_segmentation_keypoints_and_classification():
    seg = supervisely_meta(["a", "b"], task="instance_segmentation")
    assert [c["shape"] for c in seg["classes"]] == ["bitmap", "bitmap"]
    kp = supervisely_meta(["__background__", "person"], "keypoints", ["nose", "eye"])
    assert [(c["title"], c["shape"]) for c in kp["classes"]] == [
        ("person", "rectangle"),
        ("person_keypoints", "graph"),
    ]
    nodes = kp["classes"][1]["geometry_config"]["nodes"]
    assert list(nodes) == ["nose", "eye"] and nodes["eye"]["label"] == "eye"
    cls = supervisely_meta(["cat", "dog"], task="classification")
    assert cls["classes"] == []
    assert [t["name"] for t in cls["tags"]] == ["confidence", "cat", "dog"]
    assert all(t["color"].startswith("#") for t in cls["tags"])
    with pytest.raises(ValueError, match="task"):
        supervisely_meta(["a"], task="nope")
