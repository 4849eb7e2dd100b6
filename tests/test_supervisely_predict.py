"""Supervisely end to end: ids in, predictions out and uploaded, against the stand-in server."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy
from sly_standin import SuperviselyStandin
from videos import write_video

import engine
from connectors.supervisely.annotation import supervisely_to_detections
from engine.cli import main
from engine.models.reference import COLORS

CLASSES = list(COLORS)
FAST = {"requests_per_second": 200.0, "max_in_flight": 8, "num_uploaders": 2}


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def server(monkeypatch):
    with SuperviselyStandin() as standin:
        monkeypatch.setenv("SERVER_ADDRESS", standin.url)
        monkeypatch.setenv("API_TOKEN", standin.token)
        yield standin


def seed(server, per_dataset=(4, 3)):
    """A project of two datasets of scenes with known boxes; returns ids and the truth."""
    rng = np.random.default_rng(5)
    workspace = server.add_workspace()
    project = server.add_project(workspace, "source")
    truth = {}
    for d, count in enumerate(per_dataset):
        dataset = server.add_dataset(project, f"ds{d}")
        for i in range(count):
            boxes = random_boxes(rng, 80, 100, 4, min_side=8, max_side=24)
            image_id = server.add_image(dataset, f"s{d}_{i}.png", png(draw_scene(80, 100, boxes)))
            truth[image_id] = boxes
    return workspace, project, truth


def image_id(prediction) -> int:
    return int(prediction.url.rsplit("/", 1)[1])


def test_project_images_are_downloaded_and_predicted(reference_model, server):
    _, project, truth = seed(server)
    predictions = reference_model.predict(project_id=project, progress=False)
    assert sorted(image_id(p) for p in predictions) == sorted(truth)
    assert Counter(p.dataset for p in predictions) == {"ds0": 4, "ds1": 3}
    for prediction in predictions:
        assert prediction.error is None and prediction.source == "supervisely"
        expected = boxes_array(truth[image_id(prediction)])
        np.testing.assert_allclose(sort_xyxy(prediction.boxes), expected, atol=1.0)
    one = predictions[0]
    assert one.load_image().shape == (80, 100, 3)  # fetched again from the platform


def test_append_delivers_every_prediction_exactly_once_under_faults(reference_model, server):
    _, project, truth = seed(server, (6, 6))
    # a lost answer after the write (drop), a rate limit, a server error, a slow answer
    server.fail_next("drop", "429", "500", "slow", method="annotations.bulk.add")
    server.fail_next("429", "500", method="images.download")
    results = reference_model.predict(
        project_id=project,
        upload="append",
        to="supervisely",
        upload_options=FAST,
        progress=False,
    )
    report = results.outputs["upload:supervisely"]
    assert report["delivered"] == 12 and report["dead"] == 0
    assert server.count(status=429) + server.count(status=500) > 0  # faults really happened
    meta_classes = {c["title"] for c in server.metas[project]["classes"]}
    for prediction in results:
        stored = supervisely_to_detections(
            {"size": {"height": 80, "width": 100}, "objects": server.objects(image_id(prediction))},
            CLASSES,
        )
        assert len(stored) == len(prediction)  # once each: no duplicate after a lost answer
        np.testing.assert_allclose(sort_xyxy(stored.xyxy), sort_xyxy(prediction.boxes))
        assert set(prediction.classes) <= meta_classes


def test_create_mirrors_the_source_datasets(reference_model, server):
    _, project, truth = seed(server)
    session = reference_model.predict_detached(
        project_id=project,
        upload="create",
        to="supervisely",
        upload_options={**FAST, "project_name": "predicted"},
    )
    try:
        predictions = list(session)
        report = session.status()["outputs"]["upload:supervisely"]
    finally:
        session.close()
    assert len(predictions) == 7 and report["delivered"] == 7
    created = server.project_by_name("predicted")
    names = sorted(d["name"] for d in server.datasets_of(created["id"]))
    assert names == ["ds0", "ds1"]
    copied = [i for d in server.datasets_of(created["id"]) for i in server.images_of(d["id"])]
    assert len(copied) == 7
    assert all(len(server.objects(image["id"])) == 4 for image in copied)


def test_a_platform_video_is_fetched_once_and_predicted_by_frame(reference_model, server, tmp_path):
    workspace, project, _ = seed(server, (1,))
    dataset = server.datasets_of(project)[0]["id"]

    def slow_paths(i: int, width: int, height: int) -> list:
        return [
            ("red", 5 + i, 10, 25 + i, 30),
            ("green", 5 + i, 50, 25 + i, 70),
            ("blue", 100 - i, 85, 120 - i, 105),
        ]

    write_video(tmp_path / "clip.mp4", 40, (160, 120), 30, gop=10, boxes_at=slow_paths)
    video = server.add_video(dataset, "clip.mp4", (tmp_path / "clip.mp4").read_bytes())
    predictions = reference_model.predict(video_id=video, stride=5, progress=False)
    assert [p.frame_index for p in predictions] == list(range(0, 40, 5))
    assert {p.url for p in predictions} == {f"sly://videos/{video}"}
    assert all(len(p) == 3 for p in predictions)
    assert server.count("videos.download") == 1
    (tracked,) = engine.track(video_id=video, detector=reference_model, progress=False)
    assert tracked.name == "clip.mp4" and len(tracked.track_ids()) == 3
    assert [p.frame_index for p in tracked.frames] == list(range(40))


def test_bad_ids_and_missing_credentials_are_clear_errors(reference_model, server, monkeypatch):
    with pytest.raises(ValueError, match="project_id must be a Supervisely id"):
        reference_model.predict(project_id="seven")
    with pytest.raises(ValueError, match="nothing to predict"):
        reference_model.predict()
    monkeypatch.delenv("API_TOKEN")
    monkeypatch.setenv("SUPERVISELY_CONFIG", "/nonexistent")
    with pytest.raises(ValueError, match="API_TOKEN"):
        reference_model.predict(project_id=1)
    with pytest.raises(ValueError, match="API_TOKEN"):
        reference_model.predict("x.png", upload="append", to="supervisely")


def test_cli_uploads_and_resumes_what_was_not_delivered(ray_session, server, tmp_path, capsys):
    _, project, truth = seed(server, (5,))
    refused = sorted(truth)[:2]
    server.reject_images = set(refused)  # the server refuses these two, for now
    journals = tmp_path / "journals"
    code = main(
        [
            "predict", "--project-id", str(project), "--model", "reference/color-boxes",
            "--out", str(tmp_path / "out"), "--upload", "append", "--to", "supervisely",
            "--upload-option", "requests_per_second=100", "--upload-option",
            f"journal_dir={json.dumps(str(journals))}", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1  # two items went to the dead letter
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    report = summary["outputs"]["upload:supervisely"]
    assert (report["delivered"], report["dead"]) == (3, 2)
    job_id = report["job_id"]
    dead = [json.loads(line) for line in (journals / job_id / "dead_letter.jsonl").open()]
    assert sorted(int(d["key"].split(":")[1]) for d in dead) == refused
    assert all("refused" in d["reason"] and d["payload"] for d in dead)
    assert all(not server.annotations.get(i, {}).get("objects") for i in refused)

    server.reject_images = set()
    capsys.readouterr()
    code = main(["upload", "--resume", job_id, "--journal-dir", str(journals)])
    assert code == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["delivered"], resumed["dead"]) == (2, 0)
    for image_id, boxes in truth.items():  # every image holds its objects exactly once
        assert len(server.objects(image_id)) == len(boxes)
