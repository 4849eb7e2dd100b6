"""Encord: the label JSON (parsed back with the official ``encord`` package), the export,
and uploads into a prediction branch through the official SDK against a stand-in server
(tests/encord_standin.py) with faults: every prediction lands exactly once.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from encord.objects import LabelRowV2
from encord.objects.ontology_structure import OntologyStructure
from encord.ontology import Ontology
from encord.orm import ontology as orm_ontology
from encord.orm import storage as orm_storage
from encord_standin import EncordStandin, new_ssh_key
from PIL import Image
from pycocotools import mask as coco_mask
from scenes import draw_scene, random_boxes

from connectors.base import DeliveryError, UnsupportedModeError
from connectors.encord.client import EncordClient, EncordConfigError
from connectors.encord.format import (
    box_iou,
    branch_name_error,
    classifier_for_classes,
    encord_time,
    features_for_task,
    label_row,
    match_features,
    object_box,
    objects_to_detections,
    ontology_structure,
)
from connectors.encord.uploader import EncordUploader
from connectors.encord.urls import data_url
from connectors.retry import RetryPolicy, call_with_retries
from engine import plugins
from engine.cli import main
from engine.detections import Detections
from engine.models.reference import COLORS
from engine.prediction import Prediction
from engine.session import SessionError

FAST = {"requests_per_second": 200.0, "max_in_flight": 8, "num_uploaders": 2}
CLASSES = list(COLORS)
#: How a bad upload option reaches the caller: `prepare` raises ValueError when the job's
#: upload starts, before any request is sent, and the session reports it as its failure.
PREPARE_ERRORS = (ValueError, SessionError)


# ---------------------------------------------------------------------- helpers
def sdk_row(ontology: dict, row: dict, height: int, width: int) -> LabelRowV2:
    """Parse a label row with the official package (checks features, shapes, sizes)."""
    structure = OntologyStructure.from_dict(ontology)
    now = datetime.datetime.now()
    instance = orm_ontology.Ontology(
        title="t", structure=structure, ontology_hash="o", created_at=now, last_edited_at=now
    )
    metadata = orm_storage.CustomerProvidedImageMetadata(
        mimeType="image/png", fileSize=1, height=height, width=width
    )
    parsed = LabelRowV2.from_media_metadata(
        Ontology(instance, None), metadata, branch_name=row["branch_name"]
    )
    parsed.from_labels_dict(row)
    return parsed


def prediction(boxes, names, scores, height=60, width=80, masks=None, name="a.png", **kw):
    classes = sorted(set(names))
    det = Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array([classes.index(n) for n in names]),
        masks_rle=masks,
    )
    return Prediction(det, classes, name=name, height=height, width=width, **kw)


def objects(labels, boxes) -> list[tuple]:
    return sorted((label, *(round(float(v), 2) for v in box)) for label, box in zip(labels, boxes))


def known(boxes) -> list[tuple]:
    return objects([b[0] for b in boxes], [b[1:] for b in boxes])


def stored(standin: EncordStandin, data_hash: str, branch: str, height=72, width=96):
    found = standin.objects_of(data_hash, branch)
    det = objects_to_detections(found, CLASSES, height, width)
    return objects([CLASSES[i] for i in det.class_idxs], det.xyxy)


# ---------------------------------------------------------------------- format
def test_boxes_are_normalised_objects_the_sdk_reads_back():
    p = prediction([[8, 6, 40, 30], [0, 0, 80, 60]], ["red", "blue"], [0.93, 0.51])
    features = features_for_task(p.class_names, "detection")
    row = label_row(p, features, prefix="ab12", branch_name="preds")
    [unit] = row["data_units"].values()
    first, second = unit["labels"]["objects"]
    assert first["boundingBox"] == {"x": 0.1, "y": 0.1, "w": 0.4, "h": 0.4}
    assert second["boundingBox"] == {"x": 0.0, "y": 0.0, "w": 1.0, "h": 1.0}
    assert (first["confidence"], first["manualAnnotation"]) == (0.93, False)
    assert [o["objectHash"] for o in (first, second)] == ["ab120000", "ab120001"]
    assert first["featureHash"] == features["red"].feature_hash
    # the official package parses it, and writes the same objects back
    ontology = ontology_structure(features)
    parsed = sdk_row(ontology, row, 60, 80)
    instances = {o.object_hash: o for o in parsed.get_object_instances()}
    box = instances["ab120000"].get_annotation(0).coordinates
    assert (box.top_left_x, box.top_left_y, box.width, box.height) == (0.1, 0.1, 0.4, 0.4)
    assert instances["ab120000"].get_annotation(0).confidence == pytest.approx(0.93)
    assert instances["ab120001"].ontology_item.title == "blue"
    again = parsed.to_encord_dict()["data_units"][row["data_hash"]]["labels"]["objects"]
    keys = ("name", "shape", "featureHash", "objectHash", "confidence", "boundingBox")
    strip = [{k: o[k] for k in keys} for o in unit["labels"]["objects"]]
    assert sorted(({k: o[k] for k in keys} for o in again), key=str) == sorted(strip, key=str)
    # and back into Detections, also through the registered annotation format
    back = objects_to_detections(unit["labels"]["objects"], p.class_names, 60, 80)
    np.testing.assert_allclose(back.xyxy, p.boxes, atol=1e-3)
    annotation_format = plugins.annotation_format("encord")
    decoded = annotation_format.decode(annotation_format.encode(p), p.class_names)
    np.testing.assert_allclose(decoded.xyxy, p.boxes, atol=1e-3)
    np.testing.assert_array_equal(decoded.class_idxs, p.class_idxs)


def test_masks_are_bitmasks_of_the_media_size_the_sdk_decodes():
    mask = np.zeros((50, 70), bool)
    mask[5:20, 10:42] = True
    mask[30:33, 60:70] = True
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    p = prediction([[10, 5, 70, 33]], ["green"], [0.8], height=50, width=70, masks=[rle])
    features = features_for_task(p.class_names, "instance_segmentation")
    assert features["green"].shape == "bitmask"
    row = label_row(p, features, branch_name="preds")
    [obj] = row["data_units"][row["data_hash"]]["labels"]["objects"]
    assert {k: obj["bitmask"][k] for k in ("top", "left", "height", "width")} == {
        "top": 0,
        "left": 0,
        "height": 50,
        "width": 70,
    }
    parsed = sdk_row(ontology_structure(features), row, 50, 70)
    [instance] = parsed.get_object_instances()
    decoded = instance.get_annotation(0).coordinates.to_numpy_array()
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    assert object_box(obj, 50, 70) == [10, 5, 70, 33]


def test_a_classifier_gives_one_radio_classification_the_sdk_reads_back():
    p = prediction(
        [[0, 0, 80, 60]] * 3, ["cat", "dog", "owl"], [0.2, 0.7, 0.1], task="classification"
    )
    classifier = classifier_for_classes(["cat", "dog", "owl"])
    row = label_row(p, {}, prefix="cf01", branch_name="preds", classifier=classifier)
    [(key, answer)] = row["classification_answers"].items()
    assert key == "cf010000" and answer["confidence"] == 0.7
    assert answer["classifications"][0]["answers"][0]["name"] == "dog"
    assert row["data_units"][row["data_hash"]]["labels"]["objects"] == []
    parsed = sdk_row(ontology_structure({}, classifier), row, 60, 80)
    [instance] = parsed.get_classification_instances()
    attribute = instance.ontology_item.attributes[0]
    assert instance.get_answer(attribute).label == "dog"
    assert instance.get_annotation(0).confidence == pytest.approx(0.7)
    assert not instance.get_annotation(0).manual_annotation


def test_classes_match_the_ontology_by_title_and_shape():
    ontology = [
        {"name": "red", "shape": "bounding_box", "featureNodeHash": "f1"},
        {"name": "blue", "shape": "polygon", "featureNodeHash": "f2"},
        {"name": "blue", "shape": "bitmask", "featureNodeHash": "f3"},
    ]
    assert match_features(["red"], "detection", ontology)["red"].feature_hash == "f1"
    seg = match_features(["blue"], "instance_segmentation", ontology)
    assert (seg["blue"].feature_hash, seg["blue"].shape) == ("f3", "bitmask")
    with pytest.raises(ValueError) as error:
        match_features(["red", "blue", "cyan"], "detection", ontology)
    text = str(error.value)
    assert "['blue', 'cyan']" in text and "red (bounding_box)" in text
    assert "blue (polygon)" in text and "model classes: ['red', 'blue', 'cyan']" in text


def test_branch_names_and_iou():
    assert branch_name_error("model_v1.2-b") is None
    for bad in ("has space", "ünï", "", "a/b", None):
        assert "letters, digits" in branch_name_error(bad)
    assert "main" in branch_name_error("main")
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_the_export_writes_an_ontology_and_one_label_row_per_image(tmp_path):
    exporter = plugins.exporter("encord")(tmp_path, ["red", "blue"], "detection")
    first = prediction([[8, 6, 40, 30]], ["red"], [0.9], name="x.png")
    first.class_names = ["red", "blue"]
    same_name = prediction([[1, 1, 9, 9]], ["blue"], [0.7], name="x.png")
    same_name.detections.class_idxs[:] = 1
    same_name.class_names = ["red", "blue"]
    failed = prediction([], [], [], name="broken.png", error="could not decode")
    for p in (first, same_name, failed):
        exporter.write(p)
    summary = exporter.close()
    assert summary["files"] == ["encord/ontology.json", "encord/x.png.json", "encord/1_x.png.json"]
    assert (summary["written"], summary["objects"]) == (2, 2)
    assert summary["errors"][0]["name"] == "broken.png"
    ontology = json.loads((tmp_path / "encord" / "ontology.json").read_text())
    assert [o["name"] for o in ontology["objects"]] == ["red", "blue"]
    for name, label in (("x.png", "red"), ("1_x.png", "blue")):
        row = json.loads((tmp_path / "encord" / f"{name}.json").read_text())
        parsed = sdk_row(ontology, row, 60, 80)
        assert [o.ontology_item.title for o in parsed.get_object_instances()] == [label]


# ---------------------------------------------------------------------- client
def test_missing_or_bad_keys_fail_at_once_and_keys_never_show(monkeypatch, caplog):
    for variable in ("ENCORD_SSH_KEY", "ENCORD_SSH_KEY_FILE"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(EncordConfigError, match="ENCORD_SSH_KEY"):
        EncordClient()
    with pytest.raises(EncordConfigError, match="cannot read"):
        EncordClient(ssh_key_file="/nonexistent/key")
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key-XYZZY\n"
    uploader = EncordUploader(ssh_key=secret, domain="http://127.0.0.1:9")
    with pytest.raises(EncordConfigError) as error:
        uploader.validate()
    private, _ = new_ssh_key()
    client = EncordClient(ssh_key=private, domain="http://127.0.0.1:9")
    for text in (str(error.value), repr(uploader), repr(client), repr(client.__getstate__())):
        assert "XYZZY" not in text and private not in text
    assert "XYZZY" not in caplog.text


@pytest.fixture
def standin(monkeypatch):
    with EncordStandin() as server:
        monkeypatch.setenv("ENCORD_SSH_KEY", server.private_key)
        monkeypatch.setenv("ENCORD_DOMAIN", server.url)
        monkeypatch.delenv("ENCORD_SSH_KEY_FILE", raising=False)
        yield server


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def seed(standin: EncordStandin, folder: Path, count: int, seed: int = 21, shapes=None):
    """A project of ``count`` images with known rectangles; files of the same names."""
    shape = shapes or "bounding_box"
    project = standin.add_project("scenes", [(name, shape) for name in CLASSES])
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, 72, 96, 3, min_side=8, max_side=24)
        name = f"scene_{i}.png"
        image = draw_scene(72, 96, boxes)
        Image.fromarray(image).save(folder / name)
        truth[standin.add_image(project, name, 96, 72, png(image))] = (folder / name, boxes)
    return project, truth


def test_wrong_key_is_401_at_once(standin):
    other, _ = new_ssh_key()
    project = standin.add_project("p", [("red", "bounding_box")])
    client = EncordClient(ssh_key=other, domain=standin.url)
    with pytest.raises(DeliveryError) as error:
        client.project(project)
    assert error.value.status == 401 and not error.value.retryable
    assert "this public key is not registered" in str(error.value)
    assert "ENCORD_SSH_KEY" in str(error.value)
    assert standin.count("project") == 1


# ---------------------------------------------------------------------- end to end
def upload_options(project: str, tmp_path: Path, **more) -> dict:
    return {"project_hash": project, "journal_dir": str(tmp_path / "jobs"), **FAST, **more}


def test_predict_uploads_every_image_once_into_a_new_branch_under_faults(
    reference_model, standin, tmp_path
):
    project, truth = seed(standin, tmp_path / "images", 7)
    paths = [str(path) for path, _ in truth.values()]
    standin.slow_s = 0.3
    standin.fail_next("429", route="rows.list")
    standin.fail_next("504", route="rows.create")  # the SDK does not retry 504
    standin.fail_next("503", "drop", "slow", route="rows.save")  # lost answer: no duplicate
    results = reference_model.predict(
        paths,
        upload="create",
        to="encord",
        upload_options=upload_options(project, tmp_path, branch_name="model-v1", bundle_size=2),
        out=tmp_path / "out",
        format="encord",
        progress=False,
    )
    report = results.outputs["upload:encord"]
    assert (report["delivered"], report["dead"]) == (7, 0)
    for data_hash, (_, boxes) in truth.items():
        found = standin.objects_of(data_hash, "model-v1")
        assert stored(standin, data_hash, "model-v1") == known(boxes)  # exactly once each
        assert len({o["objectHash"] for o in found}) == len(found) == len(boxes)
        assert all(o["manualAnnotation"] is False and 0 < o["confidence"] <= 1 for o in found)
        assert standin.objects_of(data_hash, "main") == []  # ground truth untouched
    assert standin.branches() == {"main", "model-v1"}
    assert standin.count("rows.list", 429) == 1 and standin.count("rows.create", 504) == 1
    assert standin.count("rows.save", fault="drop") == 1
    assert standin.count("rows.save", 503) == 1
    # the export holds the same objects, and the official package reads it
    ontology = json.loads((tmp_path / "out" / "encord" / "ontology.json").read_text())
    for p in results:
        row = json.loads((tmp_path / "out" / "encord" / f"{p.name}.json").read_text())
        parsed = sdk_row(ontology, row, 72, 96)
        assert len(parsed.get_object_instances()) == len(p.boxes)


def test_a_refused_row_is_dead_with_the_platforms_reason_the_others_go_on(
    reference_model, standin, tmp_path
):
    project, truth = seed(standin, tmp_path / "images", 4, seed=22)
    refused = list(truth)[1]
    standin.refuse(refused, "the data unit is locked for review")
    results = reference_model.predict(
        [str(path) for path, _ in truth.values()],
        upload="append",
        to="encord",
        upload_options=upload_options(project, tmp_path, branch_name="preds"),
        progress=False,
    )
    report = results.outputs["upload:encord"]
    assert (report["delivered"], report["dead"]) == (3, 1)
    dead = [json.loads(line) for line in Path(report["dead_letter"]).open()]
    assert [d["key"] for d in dead] == [f"data:{refused}"]
    assert "locked for review" in dead[0]["reason"]
    for data_hash, (_, boxes) in truth.items():
        expected = [] if data_hash == refused else known(boxes)
        assert stored(standin, data_hash, "preds") == expected


def test_modes_append_replace_iou_merge_and_create(reference_model, standin, tmp_path):
    project, truth = seed(standin, tmp_path / "images", 2, seed=23)
    (first, (path, boxes)), (second, _) = truth.items()
    name, x1, y1, x2, y2 = boxes[0]
    same = {  # a person's object over the first predicted box, and one elsewhere
        "name": name,
        "shape": "bounding_box",
        "featureHash": standin.feature_hash(project, name),
        "objectHash": "HUMAN001",
        "manualAnnotation": True,
        "confidence": 1.0,
        "boundingBox": {"x": x1 / 96, "y": y1 / 72, "w": (x2 - x1) / 96, "h": (y2 - y1) / 72},
    }
    elsewhere = dict(
        same, objectHash="HUMAN002", boundingBox={"x": 0, "y": 0, "w": 0.01, "h": 0.01}
    )
    paths = [str(p) for p, _ in truth.values()]

    def run(mode: str, **options) -> dict:
        results = reference_model.predict(
            paths,
            upload=mode,
            to="encord",
            upload_options=upload_options(project, tmp_path, **options),
            progress=False,
        )
        return results.outputs["upload:encord"]

    standin.put_objects(first, "b", [same, elsewhere])
    # iou_merge: the prediction over the person's box is dropped, the others added
    report = run("iou_merge", branch_name="b")
    assert report["delivered"] == 2
    hashes = [o["objectHash"] for o in standin.objects_of(first, "b")]
    assert hashes[:2] == ["HUMAN001", "HUMAN002"] and len(hashes) == 2 + len(boxes) - 1
    assert stored(standin, second, "b") == known(truth[second][1])
    # append keeps what the row holds
    standin.put_objects(second, "c", [elsewhere])
    run("append", branch_name="c")
    assert stored(standin, first, "c") == known(boxes)
    assert "HUMAN002" in {o["objectHash"] for o in standin.objects_of(second, "c")}
    # replace: only this job's objects afterwards
    run("replace", branch_name="c")
    assert stored(standin, first, "c") == known(boxes)
    assert stored(standin, second, "c") == known(truth[second][1])
    assert "HUMAN002" not in {o["objectHash"] for o in standin.objects_of(second, "c")}
    # create refuses a branch holding another job's objects, before sending predictions
    saves = standin.saves
    with pytest.raises(PREPARE_ERRORS, match="already exists"):
        run("create", branch_name="c")
    assert standin.saves == saves


def test_a_redelivery_rewrites_the_jobs_own_objects(standin, tmp_path):
    from connectors.base import UploadPlan

    project, truth = seed(standin, tmp_path / "images", 2, seed=27)
    first = next(iter(truth))
    person = {
        "name": "red",
        "shape": "bounding_box",
        "featureHash": standin.feature_hash(project, "red"),
        "objectHash": "HUMAN001",
        "manualAnnotation": True,
        "confidence": 1.0,
        "boundingBox": {"x": 0, "y": 0, "w": 0.1, "h": 0.1},
    }
    standin.put_objects(first, "twice", [person])
    batch = [
        prediction([[8, 6, 40, 30], [50, 40, 60, 50]], ["red", "red"], [0.9, 0.8], height=72,
                   width=96, name=path.name)
        for path, _ in truth.values()
    ]  # fmt: skip
    for p in batch:
        p.class_names = CLASSES
    standin.slow_s = 1.6
    standin.fail_next("slow", route="rows.save")  # applied, but answered after the timeout
    client = EncordClient(timeout=1, retry=RetryPolicy(base_delay_s=0.01))
    uploader = EncordUploader(client=client)
    plan = UploadPlan("job-1", "append", CLASSES, options={"project_hash": project,
                                                           "branch_name": "twice"})  # fmt: skip
    uploader.prepare(plan)
    for _ in range(2):  # retried after the timeout, then the whole batch sent again
        result = call_with_retries(lambda: uploader.deliver(batch), RetryPolicy(base_delay_s=0.01))
        assert result.delivered == [f"data:{h}" for h in truth] and result.failed == {}
    assert standin.count("rows.save", fault="slow") == 1 and standin.count("rows.save") == 3
    for data_hash in truth:
        ours = [o for o in standin.objects_of(data_hash, "twice") if o["objectHash"] != "HUMAN001"]
        assert len(ours) == 2 and len({o["objectHash"] for o in ours}) == 2
    assert standin.objects_of(first, "twice")[0]["objectHash"] == "HUMAN001"
    stranger = prediction([], [], [], name="not-in-the-project.png")
    result = uploader.deliver([stranger])
    assert (
        "no data unit titled 'not-in-the-project.png'" in result.failed[uploader.item_key(stranger)]
    )


def test_bad_options_fail_before_anything_is_sent(reference_model, standin, tmp_path):
    project, truth = seed(standin, tmp_path / "images", 1, seed=24)
    path = str(next(iter(truth.values()))[0])
    for options, message in (
        ({"branch_name": "main"}, "never go into 'main'"),
        ({"branch_name": "bad name"}, "letters, digits"),
        ({"bundle_size": 0}, "bundle_size"),
        ({"colour": "red"}, "unknown Encord upload options"),
    ):
        with pytest.raises(PREPARE_ERRORS, match=message):
            reference_model.predict(
                path,
                upload="append",
                to="encord",
                upload_options=upload_options(project, tmp_path, **options),
            )
    assert standin.records == []
    with pytest.raises(PREPARE_ERRORS, match="project_hash"):
        reference_model.predict(path, upload="append", to="encord")
    with pytest.raises(UnsupportedModeError, match="create, append, replace, iou_merge"):
        EncordUploader().check_mode("merge")
    small = standin.add_project("few classes", [("red", "bounding_box"), ("blue", "polygon")])
    with pytest.raises(PREPARE_ERRORS, match="no object for the model's classes") as error:
        reference_model.predict(
            path, upload="append", to="encord", upload_options=upload_options(small, tmp_path)
        )
    assert "blue (polygon)" in str(error.value) and "'green'" in str(error.value)
    assert standin.saves == 0


def test_a_detached_session_uploads_predictions_of_encord_urls(
    reference_model, standin, tmp_path, caplog
):
    project, truth = seed(standin, tmp_path / "images", 3, seed=25)
    caplog.set_level(logging.DEBUG)
    session = reference_model.predict_detached(
        [str(path) for path, _ in truth.values()],
        upload="append",
        to="encord",
        upload_options=upload_options(
            project,
            tmp_path,
            branch_name="detached",
            data_hashes={path.name: h for h, (path, _) in truth.items()},
        ),
    )
    with session:
        predictions = list(session)
        outputs = session.status()["outputs"]
    assert len(predictions) == 3 and outputs["upload:encord"]["delivered"] == 3
    for data_hash, (_, boxes) in truth.items():
        assert stored(standin, data_hash, "detached") == known(boxes)
    assert standin.private_key not in caplog.text
    # predictions carrying an encord:// URL go to their data unit whatever their name
    uploader = EncordUploader()
    uploader.project_hash = project
    p = prediction([], [], [], name="renamed.png", url=data_url(project, list(truth)[0]))
    assert uploader.item_key(p) == f"data:{list(truth)[0]}"


def test_the_cli_uploads_and_resumes_what_was_not_delivered(ray_session, standin, tmp_path, capsys):
    project, truth = seed(standin, tmp_path / "images", 4, seed=26)
    refused = list(truth)[:2]
    for data_hash in refused:
        standin.refuse(data_hash, "row locked")
    journals = tmp_path / "journals"
    code = main(
        [
            "predict", *(str(path) for path, _ in truth.values()),
            "--model", "reference/color-boxes", "--out", str(tmp_path / "out"),
            "--upload", "create", "--to", "encord",
            "--upload-option", f"project_hash={project}",
            "--upload-option", "branch_name=cli-run",
            "--upload-option", f"journal_dir={json.dumps(str(journals))}",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1  # two rows went to the dead letter
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    report = summary["outputs"]["upload:encord"]
    assert (report["delivered"], report["dead"]) == (2, 2)
    standin.refused.clear()
    capsys.readouterr()
    code = main(["upload", "--resume", report["job_id"], "--journal-dir", str(journals)])
    assert code == 0, capsys.readouterr().err
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["delivered"], resumed["dead"]) == (2, 0)
    for data_hash, (_, boxes) in truth.items():  # every row holds its objects exactly once
        assert stored(standin, data_hash, "cli-run") == known(boxes)
        hashes = Counter(o["objectHash"] for o in standin.objects_of(data_hash, "cli-run"))
        assert sorted(hashes.values()) == [1] * len(boxes)


def test_a_projects_images_are_predicted_and_uploaded_back_without_a_mapping(
    reference_model, standin, tmp_path
):
    project, truth = seed(standin, tmp_path / "images", 5, seed=28)
    assert plugins.input_keywords()["encord_project"][1] == "encord_projects"
    standin.fail_next("429", "503", route="media")  # downloads told to wait, then a 503
    standin.fail_next("504", route="data.get")
    results = reference_model.predict(
        encord_project=project,
        upload="append",
        to="encord",
        upload_options=upload_options(project, tmp_path, branch_name="from-encord"),
        progress=False,
    )
    names = {h: path.name for h, (path, _) in truth.items()}
    assert [p.url for p in results] == [data_url(project, h) for h in truth]
    assert [p.name for p in results] == list(names.values())
    for p, (data_hash, (_, boxes)) in zip(results, truth.items()):
        assert p.error is None and p.source == "encord"
        assert objects(p.classes, p.boxes) == known(boxes)
        assert stored(standin, data_hash, "from-encord") == known(boxes)
    assert results.outputs["upload:encord"]["delivered"] == 5
    assert standin.count("media", 429) == 1 and standin.count("media", 503) == 1
    assert standin.count("data.get", 504) == 1
    with pytest.raises(ValueError, match="Encord project hash"):
        reference_model.predict(encord_project=7)


def test_a_classifier_writes_one_classification_per_row(standin, tmp_path):
    from connectors.base import UploadPlan

    classes = ["cat", "dog"]
    project = standin.add_project("pets", [], radio=("species", ["cat", "dog", "owl"]))
    hashes = [standin.add_image(project, f"pet_{i}.png", 80, 60) for i in range(2)]
    owl = {"name": "owl", "value": "owl", "featureHash": "opt00002"}
    person = {
        "HUMANCL1": {
            "classifications": [{"name": "species", "value": "species", "answers": [owl],
                                 "featureHash": "attr0001", "manualAnnotation": True}],
            "classificationHash": "HUMANCL1", "featureHash": "clas0001", "spaces": {},
            "range": [[0, 0]], "createdBy": None, "createdAt": encord_time(),
            "lastEditedBy": None, "lastEditedAt": encord_time(), "confidence": 1.0,
            "manualAnnotation": True,
        }
    }  # fmt: skip
    standin.put_classifications(hashes[0], "cls", person)
    batch = []
    for i, scores in enumerate(([0.9, 0.1], [0.3, 0.6])):
        det = Detections(np.zeros((2, 4)), np.array(scores), np.array([0, 1]))
        batch.append(Prediction(det, classes, name=f"pet_{i}.png", height=60, width=80,
                                task="classification"))  # fmt: skip
    uploader = EncordUploader()
    options = {"project_hash": project, "branch_name": "cls"}
    uploader.prepare(UploadPlan("job-c", "append", classes, "classification", options))
    for _ in range(2):  # delivered twice: still one classification of the job per row
        result = uploader.deliver(batch)
        assert result.delivered == [f"data:{hashes[1]}"]
        assert "already holds a classification 'species'" in result.failed[f"data:{hashes[0]}"]
    assert "HUMANCL1" in standin.classifications_of(hashes[0], "cls")
    uploader.prepare(UploadPlan("job-c", "replace", classes, "classification", options))
    assert uploader.deliver(batch).failed == {}
    for data_hash, top, score in ((hashes[0], "cat", 0.9), (hashes[1], "dog", 0.6)):
        answers = standin.classifications_of(data_hash, "cls")
        ours = [a for h, a in answers.items() if h != "HUMANCL1"]
        assert len(ours) == 1 and ours[0]["confidence"] == pytest.approx(score)
        assert ours[0]["classifications"][0]["answers"][0]["name"] == top
        assert ours[0]["classifications"][0]["answers"][0]["featureHash"].startswith("opt")
        assert len(answers) == 1  # replace: the person's answer is gone
    with pytest.raises(ValueError, match="radio classifications: .*species"):
        EncordUploader().prepare(
            UploadPlan("job-d", "append", ["cat", "emu"], "classification", options)
        )
