"""Encord videos: a project's videos predicted frame by frame (real H.264 media from the
stand-in, tests/encord_standin.py), and video frames uploaded into each video's branch row,
on the frame of their index, exactly once, under faults and concurrent uploaders.
"""

from __future__ import annotations

import copy
import datetime
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from encord.objects import LabelRowV2
from encord.objects.ontology_structure import OntologyStructure
from encord.ontology import Ontology
from encord.orm import ontology as orm_ontology
from encord.orm import storage as orm_storage
from encord_standin import EncordStandin
from test_encord import CLASSES, png, upload_options
from videos import draw_scene, write_video

from connectors.base import UploadPlan
from connectors.encord.format import encord_time, objects_to_detections, prediction_objects
from connectors.encord.uploader import EncordUploader
from connectors.encord.urls import data_url
from engine.detections import Detections
from engine.prediction import Prediction

W, H, FPS, FRAMES = 160, 120, 30, 24


@pytest.fixture
def standin(monkeypatch):
    with EncordStandin() as server:
        monkeypatch.setenv("ENCORD_SSH_KEY", server.private_key)
        monkeypatch.setenv("ENCORD_DOMAIN", server.url)
        monkeypatch.delenv("ENCORD_SSH_KEY_FILE", raising=False)
        yield server


def rounded(labels, boxes) -> list[tuple]:
    return sorted((label, *(round(float(v)) for v in box)) for label, box in zip(labels, boxes))


def frame_objects(standin: EncordStandin, data_hash: str, branch: str) -> dict[int, list[tuple]]:
    """Each frame's objects in the row, as (class, x1, y1, x2, y2) in pixels."""
    found = {}
    for frame, objects in standin.frames_of(data_hash, branch).items():
        det = objects_to_detections(objects, CLASSES, H, W)
        found[frame] = rounded([CLASSES[i] for i in det.class_idxs], det.xyxy)
    return found


def seed_video_project(standin: EncordStandin, folder: Path):
    """A project holding an image, a video of moving rectangles, and another image."""
    project = standin.add_project("clips", [(name, "bounding_box") for name in CLASSES])
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    first = [("red", 10, 10, 40, 30), ("blue", 50, 40, 80, 70)]
    images[standin.add_image(project, "still_0.png", W, H, png(draw_scene(H, W, first)))] = first
    truth = write_video(folder / "clip.mp4", FRAMES, (W, H), FPS, gop=6)
    video = standin.add_video(
        project, "clip.mp4", W, H, FRAMES, FPS, (folder / "clip.mp4").read_bytes()
    )
    second = [("green", 100, 20, 130, 60)]
    images[standin.add_image(project, "still_1.png", W, H, png(draw_scene(H, W, second)))] = second
    return project, video, truth, images


def test_a_projects_video_is_predicted_by_frame_and_uploaded_into_its_branch_row(
    reference_model, standin, tmp_path
):
    project, video, truth, images = seed_video_project(standin, tmp_path / "media")
    standin.fail_next("503", "drop", route="media")  # the video's download: retried twice
    standin.slow_s = 0.3
    standin.fail_next("429", route="rows.list")
    standin.fail_next("504", route="rows.create")
    standin.fail_next("503", "drop", "slow", route="rows.save")  # lost answer: no duplicate
    results = reference_model.predict(
        encord_project=project,
        stride=2,
        upload="create",
        to="encord",
        upload_options=upload_options(project, tmp_path, branch_name="video-v1", batch_size=3),
        progress=False,
    )
    frames = [p for p in results if p.frame_index is not None]
    stills = [p for p in results if p.frame_index is None]
    assert [p.frame_index for p in frames] == list(range(0, FRAMES, 2))
    assert [p.name for p in stills] == ["still_0.png", "still_1.png"]
    for p in frames:  # every frame keeps the video's title and url, and its known boxes
        assert p.error is None
        assert (p.name, p.url) == ("clip.mp4", data_url(project, video))
        assert (p.height, p.width) == (H, W)
        boxes = sorted(tuple(b) for b in p.boxes.tolist())
        known = sorted(tuple(float(v) for v in box[1:]) for box in truth[p.frame_index])
        np.testing.assert_allclose(boxes, known, atol=1.0)
    # the video was downloaded once (a 503, half a file, then the file), each image once
    assert standin.count("media", 503) == 1 and standin.count("media", 200) == 3
    assert standin.count("media", fault="drop") == 1
    assert not list(Path(frames[0].path).parent.glob("*.part"))
    report = results.outputs["upload:encord"]
    assert (report["delivered"], report["dead"]) == (len(results), 0)
    # every frame's objects, exactly once, on the frame of its index
    saved = frame_objects(standin, video, "video-v1")
    assert sorted(saved) == list(range(0, FRAMES, 2))
    for frame, objects in saved.items():
        assert objects == rounded([b[0] for b in truth[frame]], [b[1:] for b in truth[frame]])
    every = [o for objects in standin.frames_of(video, "video-v1").values() for o in objects]
    assert len({o["objectHash"] for o in every}) == len(every) == 3 * len(saved)
    assert all(o["manualAnnotation"] is False and 0 < o["confidence"] <= 1 for o in every)
    for data_hash, boxes in images.items():
        found = objects_to_detections(standin.objects_of(data_hash, "video-v1"), CLASSES, H, W)
        assert rounded([CLASSES[i] for i in found.class_idxs], found.xyxy) == rounded(
            [b[0] for b in boxes], [b[1:] for b in boxes]
        )
    assert standin.frames_of(video, "main") == {}  # ground truth untouched
    assert standin.count("rows.save", fault="drop") == 1
    # the official package reads the saved row: one object instance per frame and box
    parsed = sdk_video_row(standin, project, standin.rows[(video, "video-v1")])
    for frame in saved:
        instances = parsed.get_object_instances(filter_frames=frame)
        assert sorted(o.ontology_item.title for o in instances) == ["blue", "green", "red"]


def sdk_video_row(standin: EncordStandin, project: str, row: dict) -> LabelRowV2:
    """Parse a video label row with the official package (features, shapes, frames)."""
    structure = standin.ontologies[standin.projects[project]["ontology"]]["structure"]
    now = datetime.datetime.now()
    instance = orm_ontology.Ontology(
        title="t",
        structure=OntologyStructure.from_dict(structure),
        ontology_hash="o",
        created_at=now,
        last_edited_at=now,
    )
    metadata = orm_storage.CustomerProvidedVideoMetadata(
        fps=FPS, duration=FRAMES / FPS, width=W, height=H, file_size=1, mime_type="video/mp4"
    )
    parsed = LabelRowV2.from_media_metadata(
        Ontology(instance, None), metadata, branch_name=row["branch_name"]
    )
    parsed.from_labels_dict(row)
    return parsed


# ---------------------------------------------------------------------- the uploader
def frame_prediction(project, video, frame, boxes, names, scores, width=W, height=H, **kw):
    det = Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array([CLASSES.index(n) for n in names]),
    )
    return Prediction(
        det,
        CLASSES,
        name="clip.mp4",
        url=data_url(project, video),
        frame_index=frame,
        height=height,
        width=width,
        **kw,
    )


def person(project_box, frame, name="red", hash_="HUMAN"):
    """A person's box on ``frame`` (the encoding of a one-box prediction, made manual)."""
    p = frame_prediction("p", "v", frame, [project_box], [name], [1.0])
    [obj] = prediction_objects(p, {n: f for n, f in FEATURES.items()}, "zzzz")
    obj.update(objectHash=f"{hash_}{frame:03d}", manualAnnotation=True)
    return obj


FEATURES: dict = {}


@pytest.fixture
def video_row(standin):
    project = standin.add_project("clips", [(name, "bounding_box") for name in CLASSES])
    video = standin.add_video(project, "clip.mp4", W, H, FRAMES, FPS)
    from connectors.encord.format import Feature

    FEATURES.clear()
    for name in CLASSES:
        FEATURES[name] = Feature(name, "bounding_box", standin.feature_hash(project, name))
    return project, video


def plan(job, mode, project, branch="preds"):
    return UploadPlan(
        job, mode, CLASSES, "detection", {"project_hash": project, "branch_name": branch}
    )


def test_video_frames_keep_the_modes_and_are_idempotent(standin, video_row):
    project, video = video_row
    standin.put_frame_objects(
        video, "preds", {0: [person([10, 10, 40, 40], 0)], 1: [person([60, 60, 90, 90], 1)]}
    )
    batch = [
        frame_prediction(project, video, 0, [[10, 10, 40, 40], [100, 20, 120, 40]],
                         ["red", "green"], [0.9, 0.8]),
        frame_prediction(project, video, 1, [[60, 60, 90, 90]], ["red"], [0.7]),
        frame_prediction(project, video, 5, [[1, 2, 30, 40]], ["blue"], [0.6]),
    ]  # fmt: skip
    uploader = EncordUploader()
    uploader.prepare(plan("job-v", "append", project))
    assert [uploader.item_key(p) for p in batch] == [f"data:{video}:frame:{f}" for f in (0, 1, 5)]
    for _ in range(2):  # delivered twice: still once
        result = uploader.deliver(batch)
        assert result.failed == {} and len(result.delivered) == 3
    saved = frame_objects(standin, video, "preds")
    assert saved == {
        0: [("green", 100, 20, 120, 40), ("red", 10, 10, 40, 40), ("red", 10, 10, 40, 40)],
        1: [("red", 60, 60, 90, 90), ("red", 60, 60, 90, 90)],
        5: [("blue", 1, 2, 30, 40)],
    }
    hashes = Counter(o["objectHash"] for f in standin.frames_of(video, "preds").values() for o in f)
    assert set(hashes.values()) == {1} and {"HUMAN000", "HUMAN001"} <= set(hashes)
    # iou_merge: the person's boxes win over the job's overlapping ones
    uploader.prepare(plan("job-v", "iou_merge", project))
    assert uploader.deliver(batch).failed == {}
    assert frame_objects(standin, video, "preds") == {
        0: [("green", 100, 20, 120, 40), ("red", 10, 10, 40, 40)],
        1: [("red", 60, 60, 90, 90)],
        5: [("blue", 1, 2, 30, 40)],
    }
    # replace, in two batches: the person's objects go, the job's frames of both stay
    uploader.prepare(plan("job-v", "replace", project))
    assert uploader.deliver(batch[:1]).failed == {}
    assert uploader.deliver(batch[2:]).failed == {}
    assert frame_objects(standin, video, "preds") == {
        0: [("green", 100, 20, 120, 40), ("red", 10, 10, 40, 40)],
        5: [("blue", 1, 2, 30, 40)],
    }
    assert standin.frames_of(video, "main") == {}
    # a frame of another size is refused with the reason
    wrong = frame_prediction(project, video, 3, [[1, 1, 9, 9]], ["red"], [0.5], width=W * 2)
    failed = uploader.deliver([wrong]).failed
    assert (
        "the Encord video is 160x120, frame 3 predicted 320x120" in failed[f"data:{video}:frame:3"]
    )
    still = frame_prediction(project, video, None, [[1, 1, 9, 9]], ["red"], [0.5])
    failed = uploader.deliver([still]).failed
    assert "is a video: its frames are uploaded" in failed[f"data:{video}"]


def test_create_refuses_a_video_branch_holding_another_jobs_objects(standin, video_row):
    project, video = video_row
    standin.put_frame_objects(video, "taken", {4: [person([10, 10, 40, 40], 4)]})
    with pytest.raises(ValueError, match="already exists and holds objects of another job"):
        EncordUploader().prepare(plan("job-w", "create", project, branch="taken"))


def test_concurrent_deliveries_of_one_video_lose_no_frame(standin, video_row):
    project, video = video_row
    standin.latency_s = 0.05  # widens the read-modify-save window
    uploaders = []
    for _ in range(3):  # one copy each, as the runtime's uploader actors hold
        uploader = EncordUploader()
        uploader.prepare(plan("job-x", "append", project))
        uploaders.append(copy.copy(uploader))
    batches = [
        [frame_prediction(project, video, f, [[2 * f, 10, 2 * f + 20, 30]], ["red"], [0.9])]
        for f in range(6)
    ]
    errors = []

    def run(i: int) -> None:
        try:
            for batch in batches[i::3]:
                assert uploaders[i].deliver(batch).failed == {}
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert frame_objects(standin, video, "preds") == {
        f: [("red", 2 * f, 10, 2 * f + 20, 30)] for f in range(6)
    }


def classifier_frame(project, video, frame, scores):
    det = Detections(np.zeros((len(scores), 4)), np.array(scores), np.arange(len(scores)))
    return Prediction(det, ["cat", "dog", "owl"][: len(scores)], name="pets.mp4",
                      url=data_url(project, video), frame_index=frame, height=H, width=W,
                      task="classification")  # fmt: skip


def test_a_classifiers_video_frames_are_frame_classifications_with_the_modes(standin):
    project = standin.add_project("pets", [], radio=("species", ["cat", "dog", "owl"]))
    video = standin.add_video(project, "pets.mp4", W, H, FRAMES, FPS)
    owl = {"name": "owl", "value": "owl", "featureHash": "opt00002"}
    person = {
        "HUMANCL1": {
            "classifications": [{"name": "species", "value": "species", "answers": [owl],
                                 "featureHash": "attr0001", "manualAnnotation": True}],
            "classificationHash": "HUMANCL1", "featureHash": "clas0001", "spaces": {},
            "range": [[3, 4]], "createdBy": None, "createdAt": encord_time(),
            "lastEditedBy": None, "lastEditedAt": encord_time(), "confidence": 1.0,
            "manualAnnotation": True,
        }
    }  # fmt: skip
    standin.put_classifications(video, "cls", person)
    batch = [
        classifier_frame(project, video, 2, [0.9, 0.1]),
        classifier_frame(project, video, 3, [0.3, 0.6]),
        classifier_frame(project, video, 7, [0.2, 0.8]),
    ]
    keys = [f"data:{video}:frame:{f}" for f in (2, 3, 7)]
    options = {"project_hash": project, "branch_name": "cls"}
    uploader = EncordUploader()
    uploader.prepare(UploadPlan("job-c", "append", ["cat", "dog"], "classification", options))
    assert [uploader.item_key(p) for p in batch] == keys

    def answers() -> dict[int, list[tuple]]:
        return {
            frame: sorted(
                (a["classifications"][0]["answers"][0]["name"], a["confidence"],
                 a["manualAnnotation"]) for a in found
            )
            for frame, found in standin.frame_classifications_of(video, "cls").items()
        }  # fmt: skip

    for _ in range(2):  # delivered twice: still one classification of the job a frame
        result = uploader.deliver(batch)
        assert result.delivered == [keys[0], keys[2]]
        assert "frame 3 already holds a classification 'species'" in result.failed[keys[1]]
    assert answers() == {
        2: [("cat", 0.9, False)],
        3: [("owl", 1.0, True)],
        4: [("owl", 1.0, True)],
        7: [("dog", 0.8, False)],
    }
    assert len(standin.classifications_of(video, "cls")) == 3
    assert standin.frames_of(video, "cls") == {}  # no objects
    # the official package reads the saved row: one classification instance a frame
    parsed = sdk_video_row(standin, project, standin.rows[(video, "cls")])
    for frame, (name, confidence) in {2: ("cat", 0.9), 7: ("dog", 0.8)}.items():
        [instance] = parsed.get_classification_instances(filter_frames=frame)
        assert instance.get_answer().title == name
        assert instance.get_annotation(frame).confidence == pytest.approx(confidence)
        assert [r.start for r in instance.range_list] == [frame]
    # iou_merge: the person's answer on frame 3 wins, the job's stay once
    uploader.prepare(UploadPlan("job-c", "iou_merge", ["cat", "dog"], "classification", options))
    result = uploader.deliver(batch)
    assert result.failed == {} and result.delivered == keys
    assert answers()[3] == [("owl", 1.0, True)] and len(answers()[2]) == 1
    # replace, in two batches: the person's answer goes, the job's frames of both stay
    uploader.prepare(UploadPlan("job-c", "replace", ["cat", "dog"], "classification", options))
    assert uploader.deliver(batch[:1]).failed == {}
    assert uploader.deliver(batch[1:]).failed == {}
    assert answers() == {
        2: [("cat", 0.9, False)],
        3: [("dog", 0.6, False)],
        7: [("dog", 0.8, False)],
    }
    assert "HUMANCL1" not in standin.classifications_of(video, "cls")
    assert standin.classifications_of(video, "main") == {}  # ground truth untouched
