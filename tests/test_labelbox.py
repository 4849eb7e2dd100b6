"""Labelbox: the NDJSON format (parsed back by the official SDK) and uploads into a model run.

The uploads run the real ``labelbox`` SDK against a stand-in GraphQL server
(tests/labelbox_standin.py) holding data rows and a model run, with faults injected; the
images are coloured rectangles whose boxes the reference detector finds exactly.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter

import numpy as np
import pytest
from labelbox_standin import LabelboxStandin
from PIL import Image
from scenes import draw_scene, random_boxes

from connectors.labelbox.format import (
    MAX_PER_FEATURE,
    data_row_ref,
    line_uuid,
    over_feature_limit,
    prediction_to_ndjson,
)
from engine import plugins
from engine.cli import main
from engine.detections import Detections
from engine.masks import encode_masks
from engine.models.reference import ColorBoxDetector
from engine.prediction import Prediction

FAST = {"requests_per_second": 200.0, "max_in_flight": 8, "num_uploaders": 2, "batch_size": 3}
CLASSES = ["red", "green", "blue"]


# ---------------------------------------------------------------------- format
def _validated(line: dict):
    from labelbox.data.serialization.ndjson.classification import NDRadio
    from labelbox.data.serialization.ndjson.objects import NDMask, NDPoint, NDRectangle

    kind = next(k for k in ("bbox", "mask", "point", "answer") if k in line)
    model = {"bbox": NDRectangle, "mask": NDMask, "point": NDPoint, "answer": NDRadio}[kind]
    return model.model_validate(line)


def test_boxes_masks_points_and_classes_parse_back_with_the_sdk():
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 2:6, 3:9] = True
    det = Detections(
        np.array([[3, 2, 9, 6], [10, 11, 25, 19.5]], np.float32),
        np.array([0.875, 1.0]),
        np.array([0, 2]),
        masks_rle=encode_masks(masks),
    )
    boxes = Prediction(det, CLASSES, name="a.png", height=20, width=30)
    lines = prediction_to_ndjson(boxes, data_row_ref(global_key="gk-a"), seed="job")
    assert [line["bbox"] for line in lines] == [
        {"top": 2.0, "left": 3.0, "height": 4.0, "width": 6.0},
        {"top": 11.0, "left": 10.0, "height": 8.5, "width": 15.0},
    ]
    for line, name in zip(lines, ["red", "blue"]):
        parsed = _validated(line)
        assert (parsed.name, parsed.data_row.global_key) == (name, "gk-a")
        rect = parsed.to_common()
        assert (rect.start.x, rect.start.y) == (line["bbox"]["left"], line["bbox"]["top"])
    assert [line["confidence"] for line in lines] == [0.875, 1.0]
    again = prediction_to_ndjson(boxes, data_row_ref(global_key="gk-a"), seed="job")
    assert [line["uuid"] for line in again] == [line["uuid"] for line in lines]
    assert len({line["uuid"] for line in lines}) == 2

    segmented = Prediction(det, CLASSES, name="a.png", height=20, width=30)
    segmented.task = "instance_segmentation"
    mask_lines = prediction_to_ndjson(segmented, data_row_ref(data_row_id="dr1"))
    mask = _validated(mask_lines[0]).to_common().mask.value[..., 0]
    np.testing.assert_array_equal(mask > 0, masks[0])
    filled = _validated(mask_lines[1]).to_common().mask.value[..., 0] > 0  # empty: the box
    assert filled.sum() == 15 * 9 and filled[11:20, 10:25].all()
    assert mask_lines[0]["dataRow"] == {"id": "dr1"}

    kp = Detections(
        np.array([[0, 0, 10, 10]], np.float32),
        np.array([0.5]),
        np.array([1]),
        keypoints=np.array([[[1, 2, 1], [3, 4, 0], [5, 6, 0.9]]], np.float32),
    )
    keypoints = Prediction(kp, CLASSES, name="k.png", task="keypoints", height=10, width=10)
    points = [
        line for line in prediction_to_ndjson(keypoints, {"globalKey": "k"}) if "point" in line
    ]
    assert [(p["name"], p["point"]) for p in points] == [
        ("green keypoint 0", {"x": 1.0, "y": 2.0}),
        ("green keypoint 2", {"x": 5.0, "y": 6.0}),
    ]
    assert _validated(points[1]).to_common().x == 5.0

    scores = Detections(np.zeros((3, 4), np.float32), np.array([0.1, 0.7, 0.2]), np.arange(3))
    classified = Prediction(scores, CLASSES, name="c.png", task="classification")
    [radio] = prediction_to_ndjson(classified, {"globalKey": "c"}, classification_name="colour")
    answer = _validated(radio).to_common().answer
    assert (radio["name"], answer.name, answer.confidence) == ("colour", "green", 0.7)


def test_the_per_feature_limit_is_named_never_silently_dropped():
    lines = [{"name": "red"}] * (MAX_PER_FEATURE + 1) + [{"name": "green"}] * 3
    assert over_feature_limit(lines) == (
        "5001 annotations of feature 'red' on one data row; Labelbox takes at most 5000"
    )
    assert over_feature_limit(lines[-10:]) is None
    with pytest.raises(ValueError, match="exactly one"):
        data_row_ref("a", "b")


# ---------------------------------------------------------------------- uploads
def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def labelbox(monkeypatch):
    with LabelboxStandin() as standin:
        monkeypatch.setenv("LABELBOX_API_KEY", standin.api_key)
        monkeypatch.setenv("LABELBOX_ENDPOINT", standin.endpoint)
        yield standin


def scenes(folder, count: int, seed: int = 21) -> dict[str, list]:
    """Images of known rectangles in ``folder``: name -> boxes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, 64, 80, 3, min_side=8, max_side=20)
        Image.fromarray(draw_scene(64, 80, boxes)).save(folder / f"scene_{i}.png")
        truth[f"scene_{i}.png"] = boxes
    return truth


def known(boxes: list) -> list[tuple]:
    return sorted((b[0], *(float(v) for v in b[1:])) for b in boxes)


def landed(standin: LabelboxStandin, run_id: str) -> dict[str, list[tuple]]:
    """Global key -> the boxes the run holds, as (name, x1, y1, x2, y2)."""
    found: dict[str, list[tuple]] = {}
    for line in standin.lines_of(run_id):
        b = line["bbox"]
        box = (line["name"], b["left"], b["top"], b["left"] + b["width"], b["top"] + b["height"])
        found.setdefault(line["dataRow"]["globalKey"], []).append(box)
    return {k: sorted(v) for k, v in found.items()}


def test_predict_exports_and_uploads_each_prediction_once_through_faults(
    reference_model, labelbox, tmp_path
):
    truth = scenes(tmp_path / "images", 7)
    keys = {name: f"lb-{name}" for name in truth}
    refused = "scene_3.png"  # its data row is not in the catalog: Labelbox refuses it
    for name, key in keys.items():
        if name != refused:
            labelbox.add_data_row(key)
    run_id = labelbox.add_model_run(reference_model.classes)
    labelbox.fail_next("429", op="createMEAModelRunDataRowRegistrationTaskPyApi")
    labelbox.fail_next("drop", "503", op="createMEAPredictionImportByFilePyApi")
    labelbox.fail_next("slow", "429", op="files")
    results = reference_model.predict(
        tmp_path / "images",
        out=tmp_path / "out",
        format="labelbox",
        upload="append",
        to="labelbox",
        upload_options={
            "model_run_id": run_id,
            "global_keys": keys,
            "poll_seconds": 0.05,
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        progress=False,
    )
    report = results.outputs["upload:labelbox"]
    assert (report["delivered"], report["dead"]) == (6, 1)
    stored = landed(labelbox, run_id)
    assert set(stored) == {keys[n] for n in truth if n != refused}
    for name, boxes in truth.items():
        if name != refused:
            assert stored[keys[name]] == known(boxes)  # exactly once each
    assert Counter(f for _, _, f in labelbox.records)["drop"] == 1
    assert labelbox.count("createMEAModelRunDataRowRegistrationTaskPyApi", 429) == 1
    assert labelbox.count("files", 429) == 1
    dead = [json.loads(line) for line in open(report["dead_letter"])]
    assert [d["key"] for d in dead] == [f"globalKey:{keys[refused]}"]
    assert "not in the model run" in dead[0]["reason"] and dead[0]["payload"]
    # the export: every line, parsed back by the SDK's own classes
    lines = [json.loads(t) for t in (tmp_path / "out" / "labelbox.ndjson").open()]
    assert len(lines) == sum(len(b) for b in truth.values())
    assert {line["dataRow"]["globalKey"] for line in lines} == set(truth)
    for line in lines:
        _validated(line)
    assert results.outputs["export:labelbox"]["files"] == ["labelbox.ndjson"]


def test_a_detached_session_uploads_into_the_run(reference_model, labelbox, tmp_path):
    truth = scenes(tmp_path / "images", 4, seed=22)
    for name in truth:
        labelbox.add_data_row(name)  # the image names are the global keys
    run_id = labelbox.add_model_run(reference_model.classes)
    session = reference_model.predict_detached(
        tmp_path / "images",
        upload="append",
        to="labelbox",
        upload_options={
            "model_run_id": run_id,
            "poll_seconds": 0.05,
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
    )
    with session:
        predictions = list(session)
        outputs = session.status()["outputs"]
    assert len(predictions) == 4
    assert outputs["upload:labelbox"]["delivered"] == 4
    assert landed(labelbox, run_id) == {n: known(b) for n, b in truth.items()}


def test_the_cli_uploads_and_resumes_what_was_refused(ray_session, labelbox, tmp_path, capsys):
    truth = scenes(tmp_path / "images", 4, seed=23)
    missing = sorted(truth)[:2]
    for name in sorted(truth)[2:]:
        labelbox.add_data_row(name)
    run_id = labelbox.add_model_run(ColorBoxDetector().classes)
    journals = tmp_path / "jobs"
    code = main(
        [
            "predict", str(tmp_path / "images"), "--model", "reference/color-boxes",
            "--out", str(tmp_path / "out"), "--upload", "append", "--to", "labelbox",
            "--upload-option", f"model_run_id={run_id}",
            "--upload-option", "poll_seconds=0.05", "--upload-option", "batch_size=1",
            "--upload-option", f"journal_dir={json.dumps(str(journals))}", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1  # two items went to the dead letter
    report = json.loads((tmp_path / "out" / "summary.json").read_text())["outputs"]
    report = report["upload:labelbox"]
    assert (report["delivered"], report["dead"]) == (2, 2)
    for name in missing:  # the data rows arrive; the resume sends exactly those two
        labelbox.add_data_row(name)
    capsys.readouterr()
    code = main(["upload", "--resume", report["job_id"], "--journal-dir", str(journals)])
    assert code == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["delivered"], resumed["dead"]) == (2, 0)
    assert landed(labelbox, run_id) == {n: known(b) for n, b in truth.items()}


def test_bad_credentials_and_options_fail_before_anything_is_sent(
    reference_model, labelbox, tmp_path, monkeypatch
):
    image = draw_scene(32, 32, [("red", 4, 4, 12, 12)])
    run_id = labelbox.add_model_run(["red"])
    options = {"model_run_id": run_id, "journal_dir": str(tmp_path / "jobs")}
    with pytest.raises(ValueError, match="does not support upload='replace'"):
        reference_model.predict(image, upload="replace", to="labelbox", upload_options=options)
    with pytest.raises(Exception, match="needs upload_options=.'model_run_id'"):
        reference_model.predict(image, upload="append", to="labelbox")  # refused in prepare
    monkeypatch.setenv("LABELBOX_API_KEY", "wrong-key-123")
    with pytest.raises(Exception, match="401") as error:
        reference_model.predict(image, upload="append", to="labelbox", upload_options=options)
    assert "wrong-key-123" not in str(error.value)
    assert labelbox.count("GetModelRunPyApi", 401) == 1  # refused once, not retried
    assert not labelbox.count("createMEAPredictionImportByFilePyApi")
    monkeypatch.setenv("LABELBOX_ENDPOINT", "ftp://127.0.0.1/graphql")
    with pytest.raises(ValueError, match="http"):
        reference_model.predict(image, upload="append", to="labelbox", upload_options=options)
    monkeypatch.delenv("LABELBOX_API_KEY")
    with pytest.raises(ValueError, match="LABELBOX_API_KEY"):
        reference_model.predict(image, upload="append", to="labelbox", upload_options=options)
    assert "labelbox" in plugins.export_formats() and "labelbox" in plugins.uploader_names()


def test_the_format_plugin_round_trips_boxes():
    det = Detections(np.array([[1, 2, 30, 40]], np.float32), np.array([0.9]), np.array([1]))
    prediction = Prediction(det, CLASSES, name="a.png")
    encoded = prediction.to_annotation("labelbox")
    decoded = plugins.annotation_format("labelbox").decode(encoded, CLASSES)
    np.testing.assert_allclose(decoded.xyxy, det.xyxy)
    assert decoded.class_idxs.tolist() == [1]


def test_create_makes_model_ontology_and_run_and_finds_them_again(
    reference_model, labelbox, tmp_path
):
    truth = scenes(tmp_path / "images", 3, seed=24)
    for name in truth:
        labelbox.add_data_row(name)
    options = {"model_name": "colour boxes", "poll_seconds": 0.05, **FAST}
    results = reference_model.predict(
        tmp_path / "images",
        upload="create",
        to="labelbox",
        upload_options={**options, "journal_dir": str(tmp_path / "jobs")},
        progress=False,
    )
    assert results.outputs["upload:labelbox"]["delivered"] == 3
    [run_id] = labelbox.runs_of("colour boxes")
    model = labelbox.models[labelbox.runs[run_id]["model"]]
    tools = labelbox.ontologies[model["ontology"]]["normalized"]["tools"]
    assert [(t["name"], t["tool"]) for t in tools] == [
        (c, "rectangle") for c in reference_model.classes
    ]
    job_id = results.outputs["upload:labelbox"]["job_id"]
    assert labelbox.runs[run_id]["metadata"] == {"tessera_job": job_id}
    assert landed(labelbox, run_id) == {n: known(b) for n, b in truth.items()}

    # the same job, prepared again (a resume), finds its run; another job is refused
    from connectors.base import UploadPlan
    from connectors.labelbox.uploader import LabelboxConnector

    classes = reference_model.classes
    again = LabelboxConnector()
    again.prepare(UploadPlan(job_id, "create", classes, options={"model_name": "colour boxes"}))
    assert again.model_run_id == run_id and labelbox.runs_of("colour boxes") == [run_id]
    other = UploadPlan("other-job", "create", classes, options={"model_name": "colour boxes"})
    with pytest.raises(ValueError, match="'colour boxes' already exists"):
        LabelboxConnector().prepare(other)
    with pytest.raises(ValueError, match="num_keypoints"):
        LabelboxConnector().prepare(UploadPlan("kp", "create", classes, task="keypoints"))


def test_masks_go_in_split_imports_and_a_429_keeps_its_retry_after(labelbox, monkeypatch, caplog):
    from connectors.base import DeliveryError, UploadPlan
    from connectors.labelbox import uploader

    caplog.set_level(logging.DEBUG)

    monkeypatch.setattr(uploader, "MAX_MASKS_PER_IMPORT", 2)
    labelbox.add_data_row("m.png")
    run_id = labelbox.add_model_run(CLASSES)
    connector = uploader.LabelboxConnector()
    plan = UploadPlan("masks", "append", CLASSES, "instance_segmentation")
    connector.prepare(UploadPlan(**{**plan.__dict__, "options": {"model_run_id": run_id}}))
    masks = np.zeros((5, 16, 16), bool)
    for i in range(5):
        masks[i, i : i + 3, 2:6] = True
    det = Detections(
        np.array([[2, i, 6, i + 3] for i in range(5)], np.float32),
        np.full(5, 0.8),
        np.zeros(5, np.int64),
        masks_rle=encode_masks(masks),
    )
    prediction = Prediction(
        det, CLASSES, name="m.png", height=16, width=16, task="instance_segmentation"
    )
    assert connector.deliver([prediction]).delivered == ["globalKey:m.png"]
    assert sorted(len(i["statuses"]) for i in labelbox.imports.values()) == [1, 2, 2]
    assert len(labelbox.lines_of(run_id)) == 5
    assert connector.deliver([prediction]).delivered == ["globalKey:m.png"]  # found, not sent
    assert len(labelbox.imports) == 3 and len(labelbox.lines_of(run_id)) == 5

    labelbox.retry_after = "7"
    labelbox.fail_next("429", op="GetModelRunPyApi")
    with pytest.raises(DeliveryError) as error:
        connector.client.call("get", lambda sdk: sdk.get_model_run(run_id), retry=False)
    assert (error.value.status, error.value.retryable, error.value.retry_after) == (429, True, 7.0)
    assert labelbox.api_key not in repr(connector) + repr(connector.client) + str(error.value)
    assert caplog.records and labelbox.api_key not in caplog.text  # the SDK logged at DEBUG


def test_a_dataset_is_an_input_and_its_predictions_go_back_with_no_mapping(
    reference_model, labelbox, tmp_path
):
    rng = np.random.default_rng(25)
    dataset = labelbox.add_dataset("street")
    truth, ids = {}, []
    for key in ["a.png", None, "c.png"]:  # the second has no global key
        boxes = random_boxes(rng, 48, 64, 3, min_side=8, max_side=16)
        image = draw_scene(48, 64, boxes)
        ids.append(labelbox.add_data_row(key, media=png(image), dataset=dataset))
        truth[ids[-1]] = (key, image, boxes)
    run_id = labelbox.add_model_run(reference_model.classes)
    labelbox.fail_next("429", op="media")  # a download told to wait: retried
    labelbox.fail_next("503", op="GetDataRowPyApi")
    results = reference_model.predict(
        labelbox_dataset_ids=[dataset],
        upload="append",
        to="labelbox",
        upload_options={
            "model_run_id": run_id,
            "poll_seconds": 0.05,
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        progress=False,
    )
    assert [p.name for p in results] == ["a.png", ids[1], "c.png"]
    assert [p.url for p in results] == [
        f"labelbox://datarows/{ids[0]}?globalKey=a.png",
        f"labelbox://datarows/{ids[1]}",
        f"labelbox://datarows/{ids[2]}?globalKey=c.png",
    ]
    for prediction, data_row_id in zip(results, ids):
        assert prediction.error is None and prediction.dataset == "street"
        assert sorted(zip(prediction.classes, prediction.boxes.tolist())) == sorted(
            (b[0], [float(v) for v in b[1:]]) for b in truth[data_row_id][2]
        )
    np.testing.assert_array_equal(results[1].load_image(), truth[ids[1]][1])
    assert labelbox.count("media", 429) == 1 and labelbox.count("GetDataRowPyApi", 503) == 1
    assert results.outputs["upload:labelbox"]["delivered"] == 3
    by_row = Counter(
        line["dataRow"].get("globalKey") or line["dataRow"]["id"]
        for line in labelbox.lines_of(run_id)
    )
    assert by_row == {(k or i): len(truth[i][2]) for i, (k, _, _) in truth.items()}


def test_a_model_runs_rows_are_an_input_and_the_upload_goes_back_into_that_run(
    reference_model, labelbox, tmp_path
):
    rng = np.random.default_rng(26)
    run_id = labelbox.add_model_run(reference_model.classes)
    truth = {}
    for key in ["r1.png", "r2.png"]:
        boxes = random_boxes(rng, 40, 56, 2, min_side=8, max_side=14)
        labelbox.add_to_run(
            run_id, labelbox.add_data_row(key, media=png(draw_scene(40, 56, boxes)))
        )
        truth[key] = boxes
    out = tmp_path / "out"
    results = reference_model.predict(
        labelbox_model_run_id=run_id,  # the singular keyword, a string id
        out=out,
        format="labelbox",
        upload="append",
        to="labelbox",
        upload_options={"poll_seconds": 0.05, "journal_dir": str(tmp_path / "jobs")},
        progress=False,
    )
    assert [p.name for p in results] == ["r1.png", "r2.png"]
    assert results.outputs["upload:labelbox"]["delivered"] == 2  # no model_run_id given
    assert landed(labelbox, run_id) == {k: known(b) for k, b in truth.items()}
    exported = [json.loads(t) for t in (out / "labelbox.ndjson").open()]
    assert Counter(line["dataRow"]["globalKey"] for line in exported) == {"r1.png": 2, "r2.png": 2}
    with pytest.raises(ValueError, match="must be a Labelbox id"):
        reference_model.predict(labelbox_dataset_ids=[7])


def test_a_partly_refused_item_is_resumed_without_duplicating_what_landed(
    ray_session, labelbox, tmp_path, capsys
):
    folder = tmp_path / "images"
    folder.mkdir()
    truth = {
        "a.png": [("red", 4, 4, 20, 20), ("blue", 40, 30, 60, 50)],  # blue: not in the run
        "b.png": [("green", 6, 8, 22, 24)],
        "c.png": [("red", 30, 6, 50, 20), ("green", 8, 36, 24, 56)],
    }
    for name, boxes in truth.items():
        Image.fromarray(draw_scene(64, 80, boxes)).save(folder / name)
        labelbox.add_data_row(name)
    run_id = labelbox.add_model_run(["red", "green"])  # the model's ontology lacks "blue"
    journals = tmp_path / "jobs"
    code = main(
        [
            "predict", str(folder), "--model", "reference/color-boxes",
            "--out", str(tmp_path / "out"), "--upload", "append", "--to", "labelbox",
            "--upload-option", f"model_run_id={run_id}",
            "--upload-option", "poll_seconds=0.05", "--upload-option", "batch_size=3",
            "--upload-option", f"journal_dir={json.dumps(str(journals))}", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1
    report = json.loads((tmp_path / "out" / "summary.json").read_text())["outputs"]
    report = report["upload:labelbox"]
    assert (report["delivered"], report["dead"]) == (2, 1)
    [dead] = [json.loads(line) for line in open(report["dead_letter"])]
    of_a = [line for line in labelbox.lines_of(run_id) if line["dataRow"]["globalKey"] == "a.png"]
    assert dead["key"] == "globalKey:a.png" and [b["name"] for b in of_a] == ["red"]
    # the refused line: the one of a.png's two (uuids derive from the job) that did not land
    [refused] = {line_uuid(report["job_id"], "a.png", i) for i in range(2)} - {
        line["uuid"] for line in of_a
    }
    assert "refused 1 of 2 lines" in dead["reason"] and refused in dead["reason"]
    assert "no feature 'blue'" in dead["reason"]

    def resume() -> dict:
        capsys.readouterr()
        code = main(["upload", "--resume", report["job_id"], "--journal-dir", str(journals)])
        return {"code": code, **json.loads(capsys.readouterr().out.strip().splitlines()[-1])}

    # still refused: reported again, the red line it took is not sent twice
    again = resume()
    assert (again["code"], again["delivered"], again["dead"]) == (1, 0, 1)
    assert Counter(line["uuid"] for line in labelbox.lines_of(run_id)).most_common(1)[0][1] == 1
    assert len(labelbox.lines_of(run_id)) == 4
    # the ontology learns "blue": the resume sends that line alone
    labelbox.models[labelbox.runs[run_id]["model"]]["features"].add("blue")
    done = resume()
    assert (done["code"], done["delivered"], done["dead"]) == (0, 1, 0)
    uuids = Counter(line["uuid"] for line in labelbox.lines_of(run_id))
    assert set(uuids.values()) == {1} and refused in uuids
    assert landed(labelbox, run_id) == {n: known(b) for n, b in truth.items()}


def test_a_partly_refused_item_in_another_batch_or_uploader_never_lands_twice(labelbox):
    from connectors.base import DeliveryError, UploadPlan
    from connectors.labelbox.uploader import LabelboxConnector

    for key in ("p.png", "q.png", "r.png"):
        labelbox.add_data_row(key)
    run_id = labelbox.add_model_run(["red", "green"])
    plan = UploadPlan("split", "append", CLASSES, options={"model_run_id": run_id})
    first, second, late = LabelboxConnector(), LabelboxConnector(), LabelboxConnector()
    for connector in (first, second, late):  # the copies of three uploaders
        connector.prepare(plan)

    def prediction(name: str, classes: list[str]) -> Prediction:
        boxes = np.array([[i * 10, 0, i * 10 + 8, 8] for i in range(len(classes))], np.float32)
        det = Detections(
            boxes, np.full(len(classes), 0.9), np.array(list(map(CLASSES.index, classes)))
        )
        return Prediction(det, CLASSES, name=name)

    def uuids() -> Counter:
        return Counter(line["uuid"] for line in labelbox.lines_of(run_id))

    p, q = prediction("p.png", ["red", "blue", "green"]), prediction("q.png", ["green"])
    result = first.deliver([p, q])
    assert result.delivered == ["globalKey:q.png"]
    blue = line_uuid("split", "p.png", 1)
    assert "refused 1 of 3 lines" in result.failed["globalKey:p.png"]
    assert blue in result.failed["globalKey:p.png"]
    assert len(uuids()) == 3 and blue not in uuids()
    # p alone (a split batch, a resume), by another uploader: only its blue line goes again;
    # the answer to that import is lost, and the retry finds it rather than sending twice more
    labelbox.fail_next("drop", op="createMEAPredictionImportByFilePyApi")
    with pytest.raises(DeliveryError):
        second.deliver([p])
    assert "no feature 'blue'" in second.deliver([p]).failed["globalKey:p.png"]
    assert len(uuids()) == 3 and set(uuids().values()) == {1}
    labelbox.models[labelbox.runs[run_id]["model"]]["features"].add("blue")
    assert first.deliver([p]).delivered == ["globalKey:p.png"]  # the blue line alone
    assert first.deliver([p]).delivered == ["globalKey:p.png"]  # all landed: nothing sent
    assert len(uuids()) == 4 and set(uuids().values()) == {1}
    # an uploader that has not read the recoveries the others made takes the next number
    r = prediction("r.png", ["red", "blue"])
    labelbox.add_to_run(run_id, labelbox.data_rows["r.png"])
    lines = prediction_to_ndjson(r, {"globalKey": "r.png"}, "split")
    assert late._recover(late._model_run(), [lines]) == {line["uuid"]: None for line in lines}
    names = sorted(i["name"] for i in labelbox.imports.values() if "recovery" in i["name"])
    assert names == [f"tessera-split-recovery-{n}" for n in range(5)]
    assert len(uuids()) == 6 and set(uuids().values()) == {1}


def test_a_batch_that_landed_then_failed_is_retried_item_by_item_without_duplicates(labelbox):
    """The runtime retries a failed batch item by item (another import name): nothing twice."""
    from connectors.base import DeliveryError, UploadPlan
    from connectors.labelbox.uploader import LabelboxConnector

    for key in ("s.png", "t.png"):
        labelbox.add_data_row(key)
    run_id = labelbox.add_model_run(["red", "green"])
    connector = LabelboxConnector()
    connector.prepare(UploadPlan("whole", "append", CLASSES, options={"model_run_id": run_id}))

    def prediction(name: str) -> Prediction:
        det = Detections(
            np.array([[0, 0, 8, 8], [10, 0, 18, 8]], np.float32),
            np.full(2, 0.9),
            np.array([CLASSES.index("red"), CLASSES.index("green")]),
        )
        return Prediction(det, CLASSES, name=name)

    s, t = prediction("s.png"), prediction("t.png")
    labelbox.fail_next("503", op="files")  # the batch's import landed; its status file fails
    with pytest.raises(DeliveryError):
        connector.deliver([s, t])
    assert len(labelbox.lines_of(run_id)) == 4
    # the runtime gives up on the batch and delivers each item alone, on the same uploader
    assert connector.deliver([s]).delivered == ["globalKey:s.png"]
    assert connector.deliver([t]).delivered == ["globalKey:t.png"]
    counts = Counter(line["uuid"] for line in labelbox.lines_of(run_id))
    assert len(counts) == 4 and set(counts.values()) == {1}
