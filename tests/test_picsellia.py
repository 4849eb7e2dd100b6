"""Picsellia: a job's predictions monitored in a deployment, exactly once through faults.

The uploads go to a stand-in Picsellia server (tests/picsellia_standin.py) that plays the
main host (deployment, model version labels) and the monitoring host (login, predictions),
checks each ``raw_predictions`` with the SDK's models, and injects 429 with Retry-After,
5xx, slow answers, answers lost after the body was stored, and an expired JWT. The images
are coloured rectangles whose boxes the reference detector finds exactly.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from picsellia_standin import PicselliaStandin
from PIL import Image
from scenes import draw_scene, random_boxes

from connectors.picsellia.client import PicselliaClient
from connectors.picsellia.uploader import PicselliaConnector
from engine import plugins
from engine.cli import main
from engine.detections import Detections
from engine.models.reference import COLORS
from engine.plugins import MonitoredImage
from engine.prediction import Prediction

FAST = {"requests_per_second": 500.0, "max_in_flight": 8, "num_uploaders": 2, "batch_size": 3}
#: The deployment's labels: ids that are not the classes' positions.
LABELS = {str(11 + i): name for i, name in enumerate(COLORS)}
IDS = {name: int(i) for i, name in LABELS.items()}


@pytest.fixture
def picsellia(monkeypatch):
    with PicselliaStandin(labels=LABELS) as standin:
        monkeypatch.setenv("PICSELLIA_API_TOKEN", standin.api_token)
        monkeypatch.setenv("PICSELLIA_HOST", standin.url)
        monkeypatch.delenv("PICSELLIA_MONITORING_HOST", raising=False)
        monkeypatch.delenv("PICSELLIA_ORGANIZATION_ID", raising=False)
        yield standin


def scenes(folder, count: int, seed: int = 31) -> dict[str, list]:
    """Images of known rectangles in ``folder``: name -> boxes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, 64, 80, 3, min_side=8, max_side=20)
        Image.fromarray(draw_scene(64, 80, boxes)).save(folder / f"scene_{i}.png")
        truth[f"scene_{i}.png"] = boxes
    return truth


def image_name(body: dict) -> str:
    """The image a stored body came from (filename ``<stem>_<digest>.png``)."""
    return body["filename"].rsplit("_", 1)[0] + ".png"


def monitored(standin: PicselliaStandin) -> dict[str, list[tuple]]:
    """Image name -> the boxes stored for it, (class, x1, y1, x2, y2), one list per body."""
    by_id = {v: k for k, v in IDS.items()}
    found: dict[str, list] = {}
    for body in standin.stored:
        raw = body["raw_predictions"]
        boxes = sorted(
            (by_id[c], left, top, right, bottom)
            for c, (top, left, bottom, right) in zip(
                raw["detection_classes"], raw["detection_boxes"]
            )
        )
        found.setdefault(image_name(body), []).append(boxes)
    return found


def known(boxes: list) -> list[tuple]:
    return sorted(tuple(b) for b in boxes)


def check_exactly_once(standin: PicselliaStandin, truth: dict, folder) -> None:
    stored = monitored(standin)
    assert set(stored) == set(truth)
    for name, boxes in truth.items():
        assert stored[name] == [known(boxes)]  # one body, the detector's exact boxes
    for body in standin.stored:
        assert body["image"] == (folder / image_name(body)).read_bytes()
        assert (body["height"], body["width"], body["content_type"]) == (64, 80, "IMAGE/PNG")
        assert body["latency"] > 0  # the model's measured time for that image


def test_predict_monitors_each_image_once_through_every_fault(reference_model, picsellia, tmp_path):
    truth = scenes(tmp_path / "images", 7)
    picsellia.delay_s = 0.05  # every answer is slow
    picsellia.fail_next(429, retry_after=0.05)
    picsellia.fail_next(500)
    picsellia.fail_next(503, retry_after=0.02)
    picsellia.drop_after_write(1)  # stored, but the answer is lost: the retry gets 409
    picsellia.expire_jwt(after=3)  # the JWTs expire mid-job: log in again
    results = reference_model.predict(
        tmp_path / "images",
        out=tmp_path / "out",
        format="picsellia",
        upload="append",
        to="picsellia",
        upload_options={
            "deployment_id": picsellia.deployment_id,
            "tags": ["replay"],
            "source": "offline",
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
        progress=False,
    )
    report = results.outputs["upload:picsellia"]
    assert (report["delivered"], report["dead"]) == (7, 0)
    check_exactly_once(picsellia, truth, tmp_path / "images")
    counts = picsellia.counts
    assert (counts[429], counts[500], counts[503], counts["dropped"]) == (1, 1, 1, 1)
    assert counts[409] >= 1 and counts[401] >= 1 and counts[201] == 6
    assert picsellia.logins >= 3  # one per uploader, and again after the expiry
    assert {b["source"] for b in picsellia.stored} == {"offline"}
    assert all(b["tags"] == ["replay"] for b in picsellia.stored)
    assert len({(b["filename"], b["timestamp"]) for b in picsellia.stored}) == 7
    # the export: one body per image, without the image, parsed by the SDK's model
    from picsellia.types.schemas_prediction import DetectionPredictionFormat

    lines = [json.loads(t) for t in (tmp_path / "out" / "picsellia.jsonl").open()]
    assert sorted(image_name(line) for line in lines) == sorted(truth)
    for line in lines:
        assert "image" not in line and line["latency"] > 0
        parsed = DetectionPredictionFormat.model_validate(line["raw_predictions"])
        assert len(parsed.detection_boxes) == len(truth[image_name(line)])
    assert results.outputs["export:picsellia"]["files"] == ["picsellia.jsonl"]


def test_a_detached_session_monitors_its_predictions(reference_model, picsellia, tmp_path):
    truth = scenes(tmp_path / "images", 4, seed=32)
    picsellia.fail_next(503, count=2, retry_after=0.02)
    session = reference_model.predict_detached(
        tmp_path / "images",
        upload="append",
        to="picsellia",
        upload_options={
            "deployment_name": picsellia.deployment_name,  # found by name
            "journal_dir": str(tmp_path / "jobs"),
            **FAST,
        },
    )
    with session:
        predictions = list(session)
        outputs = session.status()["outputs"]
    assert len(predictions) == 4
    assert outputs["upload:picsellia"]["delivered"] == 4
    check_exactly_once(picsellia, truth, tmp_path / "images")


def test_the_cli_monitors_and_resumes_what_died(ray_session, picsellia, tmp_path, capsys):
    truth = scenes(tmp_path / "images", 4, seed=33)
    journals = tmp_path / "jobs"
    # one uploader, one image a batch: the first two images get 503 until retries are spent
    picsellia.fail_next(503, count=12, retry_after=0.01)
    code = main(
        [
            "predict", str(tmp_path / "images"), "--model", "reference/color-boxes",
            "--out", str(tmp_path / "out"), "--upload", "append", "--to", "picsellia",
            "--upload-option", f"deployment_id={picsellia.deployment_id}",
            "--upload-option", "batch_size=1", "--upload-option", "num_uploaders=1",
            "--upload-option", f"journal_dir={json.dumps(str(journals))}", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1  # two items went to the dead letter
    report = json.loads((tmp_path / "out" / "summary.json").read_text())["outputs"]
    report = report["upload:picsellia"]
    assert (report["delivered"], report["dead"]) == (2, 2)
    assert len(picsellia.stored) == 2 and picsellia.counts[503] == 12
    capsys.readouterr()
    code = main(["upload", "--resume", report["job_id"], "--journal-dir", str(journals)])
    assert code == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["delivered"], resumed["dead"]) == (2, 0)
    check_exactly_once(picsellia, truth, tmp_path / "images")
    # the resume kept the job's timestamps: start + index / 1000 for every image
    starts = {round(b["timestamp"] - int(image_name(b)[6]) / 1000, 3) for b in picsellia.stored}
    assert len(starts) == 1
    # resuming again sends nothing
    code = main(["upload", "--resume", report["job_id"], "--journal-dir", str(journals)])
    assert code == 0 and len(picsellia.stored) == 4


def test_refused_images_go_to_the_dead_letter_with_their_reason(
    reference_model, picsellia, tmp_path
):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(["red", "green", "blue", "red"]):
        image = draw_scene(40, 40, [(name, 5, 5, 20, 20)])
        Image.fromarray(image).save(folder / f"img_{i}.png")
    picsellia.fail_next(400)  # the service refuses the first body it gets
    results = reference_model.predict(
        folder,
        upload="append",
        to="picsellia",
        upload_options={
            "deployment_id": picsellia.deployment_id,
            "label_ids": {"red": 11, "green": 12},  # "blue" is not a label
            "journal_dir": str(tmp_path / "jobs"),
            **{**FAST, "num_uploaders": 1, "batch_size": 4},
        },
        progress=False,
    )
    report = results.outputs["upload:picsellia"]
    assert (report["delivered"], report["dead"]) == (2, 2)
    dead = {d["key"]: d for d in map(json.loads, open(report["dead_letter"]))}
    reasons = sorted(d["reason"] for d in dead.values())
    assert any("HTTP 400" in r and "injected 400" in r for r in reasons)
    assert any("class 'blue' is not a label" in r for r in reasons)
    assert all(d["payload"] for d in dead.values())
    assert len(picsellia.stored) == 2 and picsellia.counts[400] == 1
    names = sorted(image_name(b) for b in picsellia.stored)
    assert "img_2.png" not in names and len(set(names)) == 2


def test_bad_credentials_and_options_fail_before_anything_is_sent(
    reference_model, picsellia, tmp_path, monkeypatch
):
    image = draw_scene(32, 32, [("red", 4, 4, 12, 12)])
    options = {"deployment_id": picsellia.deployment_id, "journal_dir": str(tmp_path / "jobs")}
    with pytest.raises(ValueError, match="does not support upload='create'"):
        reference_model.predict(image, upload="create", to="picsellia", upload_options=options)
    with pytest.raises(ValueError, match=r"unknown Picsellia options \['project_id'\]"):
        reference_model.predict(
            image, upload="append", to="picsellia", upload_options={**options, "project_id": 1}
        )
    with pytest.raises(ValueError, match="needs the deployment"):
        reference_model.predict(image, upload="append", to="picsellia")
    monkeypatch.setenv("PICSELLIA_API_TOKEN", "wrong-token-123")
    with pytest.raises(Exception, match="401") as error:
        reference_model.predict(image, upload="append", to="picsellia", upload_options=options)
    assert "wrong-token-123" not in str(error.value)
    monkeypatch.delenv("PICSELLIA_API_TOKEN")
    with pytest.raises(ValueError, match="PICSELLIA_API_TOKEN"):
        reference_model.predict(image, upload="append", to="picsellia", upload_options=options)
    assert picsellia.stored == [] and sum(picsellia.counts.values()) == 0
    assert "picsellia" in plugins.export_formats() and "picsellia" in plugins.uploader_names()
    assert "picsellia" in plugins.monitor_names()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_monitor_target_sends_records_with_the_shadow_and_logs_in_again(monkeypatch):
    shadow_labels = {"1": "red", "2": "green"}
    with PicselliaStandin(labels=LABELS, shadow_labels=shadow_labels) as standin:
        monkeypatch.setenv("PICSELLIA_API_TOKEN", standin.api_token)
        monkeypatch.setenv("PICSELLIA_HOST", standin.url)
        with pytest.raises(ValueError, match="needs the deployment"):
            plugins.monitor("picsellia").validate()
        with pytest.raises(ValueError, match=r"unknown Picsellia options \['project'\]"):
            plugins.monitor("picsellia", deployment_id="d", project="p").validate()
        options = {"deployment_id": standin.deployment_id, "queue_size": 8, "dead_letter": "x"}
        target = plugins.monitor("picsellia", **options)
        target.validate()
        target.prepare_monitor(list(COLORS), "detection", ["red", "green"], {})
        assert standin.requests == []  # nothing is sent before the first delivery
        image = draw_scene(30, 40, [("green", 2, 3, 12, 13)])
        det = Detections(np.array([[2, 3, 12, 13]], np.float32), np.array([0.9]), np.array([1]))
        records = [
            MonitoredImage(
                key=f"req-7:{i}",
                prediction=Prediction(det, list(COLORS), name=f"up_{i}.png", height=30, width=40),
                latency_s=0.004,
                timestamp=1_750_000_000.25,
                image=_png(image),
                content_type="image/png",
                source="tessera-serve",
                shadow=Prediction(det, ["red", "green"], name=f"up_{i}.png", height=30, width=40),
                shadow_latency_s=0.006,
            )
            for i in range(2)
        ]
        result = target.deliver_monitored(records)
        assert sorted(result.delivered) == ["req-7:0", "req-7:1"] and not result.failed
        standin.expire_jwt()
        again = target.deliver_monitored(records)  # 401, a new login, then 409: delivered
        assert sorted(again.delivered) == ["req-7:0", "req-7:1"]
        assert len(standin.stored) == 2 and standin.counts[409] == 2 and standin.logins == 2
        body = standin.stored[0]
        assert body["raw_predictions"]["detection_classes"] == [IDS["green"]]
        assert body["raw_predictions"]["detection_boxes"] == [[3, 2, 13, 12]]
        assert body["shadow_raw_predictions"]["detection_classes"] == [2]
        assert (body["latency"], body["shadow_latency"]) == (0.004, 0.006)
        assert body["image"] == records[0].image and body["source"] == "tessera-serve"
        assert sorted(b["filename"] for b in standin.stored) == ["up_0.png", "up_1.png"]
        line = target.dead_letter_line(records[0])
        assert "image" not in line and line["filename"] == "up_0.png"
        assert standin.api_token not in repr(target) + repr(target.client)


def test_the_client_maps_statuses_and_keeps_retry_after(picsellia):
    client = PicselliaClient(monitoring_host=picsellia.url)
    body = {"filename": "x.png", "content_type": "IMAGE/PNG", "height": 2, "width": 2}
    body.update(latency=0.1, raw_predictions={"detection_classes": []}, image="AAAA")
    picsellia.fail_next(429, retry_after=1.5)
    picsellia.fail_next(502)
    picsellia.fail_next(404)
    with pytest.raises(Exception) as first:
        client.post_prediction(picsellia.deployment_id, body)
    assert (first.value.retryable, first.value.retry_after, first.value.status) == (True, 1.5, 429)
    with pytest.raises(Exception) as second:
        client.post_prediction(picsellia.deployment_id, body)
    assert (second.value.retryable, second.value.status) == (True, 502)
    with pytest.raises(Exception) as third:
        client.post_prediction(picsellia.deployment_id, body)
    assert (third.value.retryable, third.value.status) == (False, 404)
    with pytest.raises(Exception, match="HTTP 400.*raw_predictions") as fourth:
        client.post_prediction(picsellia.deployment_id, body)  # malformed: refused by the SDK
    assert fourth.value.retryable is False
    dead = PicselliaClient(monitoring_host="http://127.0.0.1:9")  # nothing listens
    with pytest.raises(Exception, match="no answer") as lost:
        dead.post_prediction(picsellia.deployment_id, body)
    assert lost.value.retryable is True
    assert picsellia.api_token not in str(lost.value) + repr(client)
    import pickle

    copy = pickle.loads(pickle.dumps(client))
    assert copy.post_prediction(picsellia.deployment_id, {**body, "raw_predictions": {
        "detection_classes": [], "detection_boxes": [], "detection_scores": [],
    }}) == "created"  # fmt: skip
    assert isinstance(PicselliaConnector().client, PicselliaClient)


def test_the_monitor_runs_in_sender_actors_and_dead_letters_a_refusal(
    ray_session, picsellia, tmp_path
):
    dead = tmp_path / "dead.jsonl"
    target = plugins.monitor(
        "picsellia",
        deployment_id=picsellia.deployment_id,
        label_ids={"red": 1, "green": 2},  # "blue" is not a label: refused by name
        num_senders=1,
        batch_size=2,
        dead_letter=str(dead),
    )
    target.validate()
    sink = target.start_monitor(list(COLORS), "detection")
    picsellia.fail_next(503, retry_after=0.01)
    picsellia.drop_after_write(1)
    for i, name in enumerate(["red", "green", "blue", "red"]):
        det = Detections(np.array([[1, 2, 9, 8]], np.float32), np.array([0.5]), np.array([0]))
        det = Detections(det.xyxy, det.scores, np.array([list(COLORS).index(name)]))
        image = _png(draw_scene(12, 12, [(name, 1, 2, 9, 8)]))
        prediction = Prediction(det, list(COLORS), name=f"m_{i}.png", height=12, width=12)
        record = MonitoredImage(
            f"req-9:{i}", prediction, 0.003, 1_760_000_000.0, image, "image/png"
        )
        assert sink.submit(record)
    stats = sink.close(timeout=60)
    assert (stats["delivered"], stats["dead"], stats["overflow"]) == (3, 1, 0)
    assert sorted(b["filename"] for b in picsellia.stored) == ["m_0.png", "m_1.png", "m_3.png"]
    assert picsellia.counts[503] == 1 and picsellia.counts["dropped"] == 1
    lines = [json.loads(t) for t in dead.read_text().splitlines()]
    assert len(lines) == 1 and "class 'blue' is not a label" in json.dumps(lines[0])
