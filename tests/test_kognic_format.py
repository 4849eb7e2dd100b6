"""Kognic without Ray: the OpenLABEL of boxes and masks (parsed by kognic-openlabel), the
scene index, the options and limits, the credentials, and the local export's file names."""

from __future__ import annotations

import base64
import io
import json
import pickle
import uuid

import numpy as np
import pytest
from kognic.openlabel.models import OpenLabelAnnotation
from PIL import Image

from connectors.kognic.client import KognicClient, KognicConfigError, resolve_credentials
from connectors.kognic.exporter import OpenLabelExporter
from connectors.kognic.format import KognicTaskError, object_key, prediction_to_openlabel
from connectors.kognic.groups import class_mapping, find_group
from connectors.kognic.scenes import SceneIndex
from connectors.kognic.uploader import KognicConnector, connections_per_uploader
from engine import plugins
from engine.detections import Detections
from engine.masks import encode_masks
from engine.prediction import Prediction

CLASSES = ["red", "green", "blue"]


def boxes_prediction(name: str = "a.png", **fields) -> Prediction:
    det = Detections(
        np.array([[10, 20, 50, 60], [0, 0, 5, 3]], np.float32),
        np.array([0.87, 1.2]),  # a score above 1 is written as 1
        np.array([0, 2]),
    )
    return Prediction(det, CLASSES, name=name, height=80, width=100, **fields)


def frame_objects(document: dict) -> list[tuple[str, dict, dict]]:
    """(key, object, its frame data) in order."""
    openlabel = document["openlabel"]
    frame = openlabel["frames"]["0"]["objects"]
    return [(k, openlabel["objects"][k], frame[k]["object_data"]) for k in frame]


def test_boxes_are_centre_and_size_with_confidence_and_stream_and_parse_with_kognic():
    document = prediction_to_openlabel(boxes_prediction(), stream="FC", seed="job", item="s1")
    parsed = OpenLabelAnnotation.model_validate(document)
    assert parsed.openlabel.metadata.schema_version.value == "1.0.0"
    assert parsed.openlabel.frames["0"].frame_properties.timestamp == 0
    objects = frame_objects(document)
    assert [(o["type"], o["name"]) for _, o, _ in objects] == [("red", "red-0"), ("blue", "blue-1")]
    assert [data["bbox"][0]["val"] for _, _, data in objects] == [
        [30.0, 40.0, 40.0, 40.0],
        [2.5, 1.5, 5.0, 3.0],
    ]
    for (_, _, data), score in zip(objects, [0.87, 1.0]):
        attributes = data["bbox"][0]["attributes"]
        assert attributes["num"] == [{"name": "confidence", "val": score}]
        assert attributes["text"] == [{"name": "stream", "val": "FC"}]
        assert set(data) == {"bbox"}  # only what Kognic takes for predictions
    keys = [k for k, _, _ in objects]
    assert keys == [object_key("job", "s1", 0), object_key("job", "s1", 1)]
    assert all(str(uuid.UUID(k)) == k for k in keys)
    again = prediction_to_openlabel(boxes_prediction(), stream="FC", seed="job", item="s1")
    assert again == document  # stable: the same prediction gives the same document
    other = prediction_to_openlabel(boxes_prediction(), stream="FC", seed="job2", item="s1")
    assert set(other["openlabel"]["objects"]).isdisjoint(keys)
    assert document["openlabel"]["streams"] == {"FC": {"type": "camera", "uri": ""}}
    with pytest.raises(ValueError, match="stream"):
        prediction_to_openlabel(boxes_prediction(), stream=" ")


def test_masks_are_grayscale_png_bitmaps_of_the_image_size():
    masks = np.zeros((2, 30, 40), bool)
    masks[0, 5:9, 10:20] = True  # the second is empty: its box becomes the mask
    det = Detections(
        np.array([[10, 5, 20, 9], [30, 20, 36, 28]], np.float32),
        np.array([0.5, 0.75]),
        np.array([1, 0]),
        masks_rle=encode_masks(masks),
    )
    prediction = Prediction(
        det, CLASSES, name="m.png", height=30, width=40, task="instance_segmentation"
    )
    document = prediction_to_openlabel(prediction)
    OpenLabelAnnotation.model_validate(document)
    decoded = []
    for _, _, data in frame_objects(document):
        assert set(data) == {"image"}
        [bitmap] = data["image"]
        assert (bitmap["mime_type"], bitmap["encoding"]) == ("image/png", "base64")
        image = Image.open(io.BytesIO(base64.b64decode(bitmap["val"])))
        assert image.mode == "L" and image.size == (40, 30)
        decoded.append(np.asarray(image))
    np.testing.assert_array_equal(decoded[0], masks[0].astype(np.uint8) * 255)
    filled = np.zeros((30, 40), np.uint8)
    filled[20:28, 30:36] = 255
    np.testing.assert_array_equal(decoded[1], filled)
    attributes = frame_objects(document)[1][2]["image"][0]["attributes"]
    assert attributes["num"] == [{"name": "confidence", "val": 0.75}]


@pytest.mark.parametrize("task", ["classification", "keypoints"])
def test_tasks_kognic_takes_no_predictions_of_are_refused_by_name(task, tmp_path):
    prediction = boxes_prediction(task=task)
    with pytest.raises(KognicTaskError, match=f"a {task} model"):
        prediction_to_openlabel(prediction)
    with pytest.raises(KognicTaskError, match=task):
        OpenLabelExporter(tmp_path, CLASSES, task)


def test_the_format_plugin_round_trips_boxes():
    encoded = boxes_prediction().to_annotation("openlabel")
    decoded = plugins.annotation_format("openlabel").decode(encoded, CLASSES)
    np.testing.assert_allclose(decoded.xyxy, boxes_prediction().boxes)
    assert decoded.class_idxs.tolist() == [0, 2]
    np.testing.assert_allclose(decoded.scores, [0.87, 1.0])


def test_images_find_their_scenes_and_each_scene_has_one_owner():
    scenes = [
        {"uuid": "s1", "externalId": "a.png", "name": "first"},
        {"uuid": "s2", "externalId": "b", "name": "c.png"},
        {"uuid": "s3", "externalId": None, "name": "d.png"},
    ]
    index = SceneIndex.build(scenes, {"x.png": "s3"})
    assert index.match("a.png") == ("s1", "a.png")
    assert index.match("b.png") == ("s2", "b")  # by the name without its suffix
    assert index.scene_of("c.png") == "s2" and index.owner("s2") == "b"
    assert index.match("x.png") == ("s3", "x.png") and index.owner("s3") == "x.png"
    assert index.scene_of("nothing.png") is None
    with pytest.raises(ValueError, match="not scenes of the dataset: \\['s9'\\]"):
        SceneIndex.build(scenes, {"a.png": "s9"})


def test_options_and_connection_limits_are_checked_before_any_work(monkeypatch):
    monkeypatch.setenv("KOGNIC_CLIENT_ID", "id")
    monkeypatch.setenv("KOGNIC_CLIENT_SECRET", "secret")
    connector = KognicConnector()
    good = {"dataset_uuid": "d1"}
    connector.check_options("create", good)
    connector.check_options("append", {**good, "predictions_group": "g"})
    cases = [
        ("create", {**good, "colour": 1}, "unknown Kognic upload options \\['colour'\\]"),
        ("create", {}, "needs upload_options=.'dataset_uuid'"),
        ("create", {**good, "predictions_group_uuid": "g1"}, "drop predictions_group_uuid"),
        ("append", good, "needs upload_options=.'predictions_group'"),
        ("create", {**good, "max_in_flight": 12}, "max_in_flight=12 is above Kognic's limit"),
        ("create", {**good, "max_in_flight": None}, "max_in_flight=None is above"),
        ("create", {**good, "num_uploaders": 11}, "num_uploaders=11"),
        ("create", {**good, "scenes": ["a"]}, "scenes must map image names"),
        ("create", {**good, "stream": ""}, "stream must be a camera id"),
    ]
    for mode, options, message in cases:
        with pytest.raises(ValueError, match=message):
            connector.check_options(mode, options)
    assert [connections_per_uploader(n, 10) for n in (1, 2, 3, 4, 10)] == [10, 5, 3, 2, 1]
    assert connections_per_uploader(2, 4) == 4


def test_credentials_come_from_the_environment_or_a_file_and_never_show(monkeypatch, tmp_path):
    for name in ("KOGNIC_CLIENT_ID", "KOGNIC_CLIENT_SECRET", "KOGNIC_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(KognicConfigError, match="KOGNIC_CLIENT_ID and KOGNIC_CLIENT_SECRET"):
        KognicConnector().validate()
    file = tmp_path / "credentials.json"
    fields = {"clientId": "file-id", "clientSecret": "file-s3cret", "email": "a@b.c"}
    file.write_text(json.dumps({**fields, "userId": 1, "issuer": "auth.kognic"}))
    monkeypatch.setenv("KOGNIC_CREDENTIALS", str(file))
    assert resolve_credentials().client_id == "file-id"
    monkeypatch.setenv("KOGNIC_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(KognicConfigError, match="cannot read the Kognic credentials file"):
        resolve_credentials()
    monkeypatch.setenv("KOGNIC_CLIENT_ID", "env-id")
    monkeypatch.setenv("KOGNIC_CLIENT_SECRET", "env-s3cret-77")
    monkeypatch.setenv("KOGNIC_HOST", "ftp://127.0.0.1:1")
    client = KognicClient()
    with pytest.raises(KognicConfigError, match="KOGNIC_HOST must be an http"):
        client.check()
    copied = pickle.loads(pickle.dumps(client))
    assert copied._session is None and copied.host == client.host
    text = repr(client) + repr(KognicConnector(client)) + repr(resolve_credentials())
    assert "env-s3cret-77" not in text and "env-id" in text


def test_class_mapping_and_groups_by_name_or_uuid():
    assert class_mapping(["car", "_background"]) == [
        {"annotatedClass": "car", "predictedClass": "car"},
        {"annotatedClass": "_background", "predictedClass": "_background"},
    ]
    groups = [{"uuid": "g1", "name": "a"}, {"uuid": "g2", "name": "b"}]
    assert find_group(groups, name="b")["uuid"] == "g2"
    assert find_group(groups, uuid="g1")["name"] == "a"
    assert find_group(groups, name="c") is None and find_group(groups, uuid="g3") is None


def test_the_export_numbers_names_that_collide_and_lists_errors(tmp_path):
    exporter = OpenLabelExporter(tmp_path, CLASSES)
    exporter.write(boxes_prediction(path="/one/a.png"))
    exporter.write(boxes_prediction(path="/two/a.png"))
    exporter.write(boxes_prediction(name="b.png", error="decode failed"))
    summary = exporter.close()
    assert summary["files"] == ["openlabel/a.png.json", "openlabel/a.png-2.json"]
    assert (summary["images"], summary["objects"]) == (2, 4)
    assert summary["errors"] == [{"name": "b.png", "error": "decode failed"}]
    assert sorted(p.name for p in (tmp_path / "openlabel").iterdir()) == [
        "a.png-2.json",
        "a.png.json",
    ]
    for name in summary["files"]:
        OpenLabelAnnotation.model_validate(json.loads((tmp_path / name).read_text()))
