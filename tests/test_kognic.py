"""Kognic: uploads into a predictions group through faults, exactly once, within 10 connections.

The uploads run ``kognic-auth``'s session against a stand-in Kognic (tests/kognic_standin.py:
a token server and the API, real HTTP servers on 127.0.0.1) that counts the open API
connections and injects 429s, 5xx, slow answers and answers lost after the write. The
images are coloured rectangles whose boxes the reference detector finds exactly.
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest
from kognic.openlabel.models import OpenLabelAnnotation
from kognic_standin import KognicStandin
from PIL import Image
from scenes import draw_scene, random_boxes

from connectors.base import DeliveryError, UploadPlan
from connectors.kognic.uploader import KognicConnector
from engine import plugins
from engine.cli import main
from engine.detections import Detections
from engine.masks import encode_masks
from engine.prediction import Prediction

FAST = {"requests_per_second": 200.0, "batch_size": 4}


@pytest.fixture
def kognic(monkeypatch):
    with KognicStandin() as standin:
        for name, value in standin.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("KOGNIC_CREDENTIALS", raising=False)
        yield standin


def scenes(folder, count: int, seed: int) -> dict[str, list]:
    """Images of known rectangles in ``folder``: name -> boxes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, 64, 80, 3, min_side=8, max_side=20)
        Image.fromarray(draw_scene(64, 80, boxes)).save(folder / f"scene_{i}.png")
        truth[f"scene_{i}.png"] = boxes
    return truth


def dataset_of(kognic: KognicStandin, names) -> tuple[str, dict[str, str]]:
    """A detection dataset with a scene per image (external id: the name, every third one
    without its suffix); image name -> scene uuid."""
    dataset = kognic.add_dataset()
    ids = {}
    for i, name in enumerate(sorted(names)):
        external = name.rsplit(".", 1)[0] if i % 3 == 2 else name
        ids[name] = kognic.add_scene(dataset, external_id=external)
    return dataset, ids


def landed(kognic: KognicStandin, group: str) -> dict[str, list]:
    """Scene uuid -> the boxes of each prediction it holds, as sorted (class, x1, y1, x2, y2)."""
    found: dict[str, list] = {}
    for row in kognic.predictions_of(group):
        OpenLabelAnnotation.model_validate(row["content"])
        openlabel = row["content"]["openlabel"]
        boxes = []
        for key, data in openlabel["frames"]["0"]["objects"].items():
            x, y, w, h = data["object_data"]["bbox"][0]["val"]
            boxes.append(
                (openlabel["objects"][key]["type"], x - w / 2, y - h / 2, x + w / 2, y + h / 2)
            )
        found.setdefault(row["sceneUuid"], []).append(sorted(boxes))
    return found


def known(boxes: list) -> list[tuple]:
    return sorted((b[0], *(float(v) for v in b[1:])) for b in boxes)


def test_predict_uploads_each_scene_once_through_faults_within_10_connections(
    reference_model, kognic, tmp_path
):
    truth = scenes(tmp_path / "images", 14, seed=31)
    lonely = "scene_13.png"  # no scene has its name: the dead letter
    dataset, ids = dataset_of(kognic, [n for n in truth if n != lonely])
    kognic.latency_s = 0.02  # answers overlap, so the uploaders use their connections
    kognic.fail_next("429", "503", "slow", "drop", "500", "drop", "slow", op="post_prediction")
    kognic.fail_next("503", op="scenes")
    kognic.fail_next("drop", op="create_group")  # created, the answer lost: found, not made twice
    results = reference_model.predict(
        tmp_path / "images",
        upload="create",
        to="kognic",
        upload_options={
            "dataset_uuid": dataset,
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        progress=False,
    )
    report = results.outputs["upload:kognic"]
    assert (report["delivered"], report["dead"]) == (13, 1)
    group = kognic.group_named(dataset, f"tessera-{report['job_id']}")
    assert len(kognic.groups) == 1 and group["description"].endswith(
        f"[tessera job {report['job_id']}]"
    )
    stored = landed(kognic, group["uuid"])
    assert stored == {ids[n]: [known(b)] for n, b in truth.items() if n != lonely}  # once each
    assert kognic.count("post_prediction", fault="drop") == 2
    assert kognic.count("post_prediction", 429) == 1 and kognic.count("post_prediction", 500) == 1
    assert kognic.count("scenes", 503) == 1
    assert 1 <= kognic.max_open_connections <= 10
    [dead] = [json.loads(line) for line in open(report["dead_letter"])]
    assert dead["key"] == f"image:{lonely}" and "no Kognic scene" in dead["reason"]
    assert dead["payload"]["name"] == lonely


def test_the_job_still_delivers_everything_when_its_token_expires(
    reference_model, kognic, tmp_path
):
    truth = scenes(tmp_path / "images", 8, seed=32)
    dataset, ids = dataset_of(kognic, truth)
    kognic.expire_every = 3  # every third stored prediction expires every token
    results = reference_model.predict(
        tmp_path / "images",
        upload="create",
        to="kognic",
        upload_options={
            "dataset_uuid": dataset,
            "predictions_group": "night run",
            "description": "colour boxes",
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        progress=False,
    )
    assert results.outputs["upload:kognic"]["delivered"] == 8
    group = kognic.group_named(dataset, "night run")
    assert group["description"].startswith("colour boxes [tessera job ")
    assert landed(kognic, group["uuid"]) == {ids[n]: [known(b)] for n, b in truth.items()}
    assert kognic.count("post_prediction", 401) >= 2  # refused, a new token, sent again
    assert kognic.tokens_issued >= 4


def test_a_detached_session_uploads_into_an_existing_group(reference_model, kognic, tmp_path):
    truth = scenes(tmp_path / "images", 5, seed=33)
    dataset, ids = dataset_of(kognic, truth)
    group = kognic.add_group(dataset, "by hand")
    kognic.fail_next("drop", "429", "slow", op="post_prediction")
    session = reference_model.predict_detached(
        tmp_path / "images",
        upload="append",
        to="kognic",
        upload_options={
            "dataset_uuid": dataset,
            "predictions_group_uuid": group,
            "stream": "FRONT",
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
    )
    with session:
        predictions = list(session)
        outputs = session.status()["outputs"]
    assert len(predictions) == 5
    assert outputs["upload:kognic"]["delivered"] == 5
    assert landed(kognic, group) == {ids[n]: [known(b)] for n, b in truth.items()}
    streams = {
        bbox["attributes"]["text"][0]["val"]
        for row in kognic.predictions_of(group)
        for found in row["content"]["openlabel"]["frames"]["0"]["objects"].values()
        for bbox in found["object_data"]["bbox"]
    }
    assert streams == {"FRONT"}
    assert kognic.count("post_prediction", fault="drop") == 1
    assert kognic.max_open_connections <= 10


def test_the_cli_uploads_and_resumes_what_was_refused_exactly_once(
    ray_session, kognic, tmp_path, capsys
):
    truth = scenes(tmp_path / "images", 6, seed=34)
    dataset, ids = dataset_of(kognic, truth)
    refused = sorted(truth)[:2]
    for name in refused:  # 503 until the retries are spent: dead, for a resume to send
        kognic.refuse[ids[name]] = 503
    journals = tmp_path / "jobs"
    code = main(
        [
            "predict", str(tmp_path / "images"), "--model", "reference/color-boxes",
            "--out", str(tmp_path / "out"), "--upload", "create", "--to", "kognic",
            "--upload-option", f"dataset_uuid={dataset}",
            "--upload-option", "batch_size=2", "--upload-option", "requests_per_second=200",
            "--upload-option", f"journal_dir={json.dumps(str(journals))}", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1  # two items went to the dead letter
    report = json.loads((tmp_path / "out" / "summary.json").read_text())["outputs"]
    report = report["upload:kognic"]
    assert (report["delivered"], report["dead"]) == (4, 2)
    dead = [json.loads(line) for line in open(report["dead_letter"])]
    assert sorted(d["key"] for d in dead) == sorted(f"scene:{ids[n]}" for n in refused)
    assert all("HTTP 503" in d["reason"] for d in dead)
    group = kognic.group_named(dataset, f"tessera-{report['job_id']}")["uuid"]
    assert set(landed(kognic, group)) == {ids[n] for n in truth if n not in refused}

    kognic.refuse.clear()
    kognic.fail_next("drop", op="post_prediction")  # the resume's first answer is lost
    capsys.readouterr()
    code = main(["upload", "--resume", report["job_id"], "--journal-dir", str(journals)])
    assert code == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["delivered"], resumed["dead"]) == (2, 0)
    assert landed(kognic, group) == {ids[n]: [known(b)] for n, b in truth.items()}
    assert len(kognic.groups) == 1  # the resume found its own group
    assert kognic.max_open_connections <= 10


def test_an_image_whose_scene_another_image_owns_is_dead_and_the_others_go_on(
    reference_model, kognic, tmp_path
):
    truth = scenes(tmp_path / "images", 3, seed=35)
    dataset = kognic.add_dataset()
    one, two = kognic.add_scene(dataset, "x"), kognic.add_scene(dataset, "y")
    mapping = {"scene_0.png": one, "scene_1.png": one, "scene_2.png": two}
    results = reference_model.predict(
        tmp_path / "images",
        upload="create",
        to="kognic",
        upload_options={
            "dataset_uuid": dataset,
            "scenes": mapping,
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        progress=False,
    )
    report = results.outputs["upload:kognic"]
    assert (report["delivered"], report["dead"]) == (2, 1)
    [dead] = [json.loads(line) for line in open(report["dead_letter"])]
    assert dead["key"] == f"scene:{one}:image:scene_1.png"
    assert "one prediction per scene" in dead["reason"] and "'scene_0.png'" in dead["reason"]
    group = kognic.group_named(dataset, f"tessera-{report['job_id']}")["uuid"]
    assert landed(kognic, group) == {
        one: [known(truth["scene_0.png"])],
        two: [known(truth["scene_2.png"])],
    }


def test_a_segmentation_dataset_gets_a_class_mapping_and_mask_bitmaps(kognic, caplog):
    caplog.set_level(logging.DEBUG)
    classes = ["red", "green"]
    dataset = kognic.add_dataset("segmentation", classes)
    scene = kognic.add_scene(dataset, "m.png")
    with pytest.raises(
        DeliveryError, match="HTTP 400: a segmentation dataset's group needs a classMapping"
    ):
        KognicConnector().prepare(UploadPlan("boxes", "create", classes, "detection",
                                             {"dataset_uuid": dataset}))  # fmt: skip
    connector = KognicConnector()
    plan = UploadPlan(
        "masks", "create", classes, "instance_segmentation", {"dataset_uuid": dataset}
    )
    connector.prepare(plan)
    group = kognic.groups[connector.group_uuid]
    assert sorted(m["annotatedClass"] for m in group["classMapping"]) == [
        "_background",
        "green",
        "red",
    ]
    assert all(m["annotatedClass"] == m["predictedClass"] for m in group["classMapping"])
    masks = np.zeros((2, 20, 24), bool)
    masks[0, 2:8, 3:9], masks[1, 10:18, 12:20] = True, True
    det = Detections(
        np.array([[3, 2, 9, 8], [12, 10, 20, 18]], np.float32),
        np.array([0.9, 0.6]),
        np.array([0, 1]),
        masks_rle=encode_masks(masks),
    )
    prediction = Prediction(
        det, classes, name="m.png", height=20, width=24, task="instance_segmentation"
    )
    assert connector.deliver([prediction]).delivered == [f"scene:{scene}"]
    [row] = kognic.predictions_of(connector.group_uuid)
    objects = row["content"]["openlabel"]["frames"]["0"]["objects"].values()
    assert [set(o["object_data"]) for o in objects] == [{"image"}, {"image"}]
    assert connector.deliver([prediction]).delivered == [f"scene:{scene}"]  # held: not sent
    assert len(kognic.predictions_of(connector.group_uuid)) == 1
    assert caplog.records and kognic.client_secret not in caplog.text
    assert kognic.client_secret not in repr(connector) + repr(connector.client)


def test_groups_are_found_refused_or_created_once_and_bad_input_fails_first(
    reference_model, kognic, tmp_path, monkeypatch
):
    dataset = kognic.add_dataset()
    kognic.add_scene(dataset, "a.png")
    kognic.add_group(dataset, "theirs", "made by a person")
    image = draw_scene(32, 32, [("red", 4, 4, 12, 12)])
    options = {"dataset_uuid": dataset, "journal_dir": str(tmp_path / "jobs")}
    # create: a name another made is refused; the same job finds its own group again
    plan = UploadPlan("j1", "create", ["red"], options={**options, "predictions_group": "theirs"})
    with pytest.raises(ValueError, match="'theirs' already exists .* this job did not create"):
        KognicConnector().prepare(plan)
    mine = UploadPlan("j1", "create", ["red"], options={**options, "predictions_group": "mine"})
    first, again = KognicConnector(), KognicConnector()
    first.prepare(mine)
    again.prepare(mine)
    assert first.group_uuid == again.group_uuid and len(kognic.groups) == 2
    # append: by name; a missing group is named with the ones there are
    by_name = UploadPlan("j2", "append", ["red"], options={**options, "predictions_group": "mine"})
    connector = KognicConnector()
    connector.prepare(by_name)
    assert connector.group_uuid == first.group_uuid
    missing = UploadPlan("j3", "append", ["red"], options={**options, "predictions_group": "no"})
    with pytest.raises(ValueError, match="no predictions group named 'no'; its groups: \\['mine'"):
        KognicConnector().prepare(missing)
    with pytest.raises(ValueError, match="does not support upload='replace'"):
        reference_model.predict(image, upload="replace", to="kognic", upload_options=options)
    with pytest.raises(ValueError, match="max_in_flight=11 is above Kognic's limit of 10"):
        reference_model.predict(
            image, upload="create", to="kognic", upload_options={**options, "max_in_flight": 11}
        )
    requests_before = len(kognic.records)
    classifier = UploadPlan("j4", "create", ["red"], "classification", options=options)
    with pytest.raises(ValueError, match="a classification model"):
        KognicConnector().prepare(classifier)
    assert len(kognic.records) == requests_before  # refused before any request
    # wrong credentials: refused once, never retried, the secret in no message
    monkeypatch.setenv("KOGNIC_CLIENT_SECRET", "wrong-secret-5")
    with pytest.raises(Exception, match="401") as error:
        reference_model.predict(image, upload="create", to="kognic", upload_options=options)
    assert "wrong-secret-5" not in str(error.value)
    assert kognic.count("token", 401) == 1 and not kognic.count("post_prediction")
    monkeypatch.delenv("KOGNIC_CLIENT_ID")
    monkeypatch.delenv("KOGNIC_CLIENT_SECRET")
    with pytest.raises(ValueError, match="KOGNIC_CLIENT_ID"):
        reference_model.predict(image, upload="create", to="kognic", upload_options=options)
    assert "kognic" in plugins.uploader_names() and "openlabel" in plugins.export_formats()


def test_the_openlabel_export_writes_a_document_per_image_and_never_overwrites(
    reference_model, tmp_path
):
    boxes = {
        "one": [("red", 4, 4, 20, 20)],
        "two": [("green", 10, 6, 30, 26), ("blue", 40, 30, 60, 50)],
    }
    for folder, found in boxes.items():
        (tmp_path / "images" / folder).mkdir(parents=True)
        Image.fromarray(draw_scene(64, 80, found)).save(tmp_path / "images" / folder / "a.png")
    Image.fromarray(draw_scene(64, 80, [])).save(tmp_path / "images" / "b.png")
    paths = [tmp_path / "images" / "one" / "a.png", tmp_path / "images" / "two" / "a.png"]
    results = reference_model.predict(
        [*paths, tmp_path / "images" / "b.png"], out=tmp_path / "out", format="openlabel"
    )
    summary = results.outputs["export:openlabel"]
    assert summary["files"] == [
        "openlabel/a.png.json",
        "openlabel/a.png-2.json",
        "openlabel/b.png.json",
    ]
    written = {}
    for name in summary["files"]:
        document = json.loads((tmp_path / "out" / name).read_text())
        parsed = OpenLabelAnnotation.model_validate(document)
        written[name] = sorted(o.type for o in (parsed.openlabel.objects or {}).values())
    assert written == {
        "openlabel/a.png.json": ["red"],
        "openlabel/a.png-2.json": ["blue", "green"],
        "openlabel/b.png.json": [],
    }
    assert Counter(p.name for p in (tmp_path / "out" / "openlabel").iterdir()) == {
        "a.png.json": 1,
        "a.png-2.json": 1,
        "b.png.json": 1,
    }
