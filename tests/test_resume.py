"""Resumable jobs: a job killed mid-way resumes, predicting only what is missing, and every
export (and upload) ends with every item exactly once (`engine.jobs`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from acme_standin import AcmeStandin
from PIL import Image
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

import engine
from engine import jobs
from engine.cli import main
from engine.session import NAMESPACE, SessionError, session_actor_name

FAST = {"requests_per_second": 200.0, "max_in_flight": 8, "num_uploaders": 2}
TESSERA = str(Path(sys.executable).parent / "tessera")


def scenes(folder: Path, count: int, seed: int = 5, size: tuple[int, int] = (48, 64)) -> dict:
    """``count`` images of known rectangles in ``folder``: name -> boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, *size, 2, min_side=6, max_side=16)
        name = f"scene_{i:03d}.png"
        Image.fromarray(draw_scene(*size, boxes)).save(folder / name)
        truth[name] = boxes
    return truth


def done_count(directory: Path) -> int:
    """Items the job's journal records done (read while the job writes it)."""
    path = directory / jobs.JOURNAL_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM done").fetchone()[0])
    except sqlite3.OperationalError:  # the tables are not there yet
        return 0


def jsonl_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def assert_each_once_with_boxes(lines: list[dict], fresh: dict[str, np.ndarray]) -> None:
    """Every image exactly once, with the boxes a fresh full run gives."""
    assert Counter(line["name"] for line in lines) == dict.fromkeys(fresh, 1)
    for line in lines:
        boxes = np.array(line["boxes"], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(sort_xyxy(boxes), fresh[line["name"]], atol=0.01)


def fresh_boxes(model, folder: Path) -> dict[str, np.ndarray]:
    return {p.name: sort_xyxy(p.boxes) for p in model.predict(str(folder), progress=False)}


# --------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("export", ["jsonl", "coco"])
def test_a_driver_killed_mid_job_resumes_from_the_cli(
    ray_session, reference_model, tmp_path, export, capsys
):
    truth = scenes(tmp_path / "images", 60, size=(160, 200))
    fresh = fresh_boxes(reference_model, tmp_path / "images")
    for name, boxes in truth.items():  # the reference detector finds the drawn boxes
        np.testing.assert_allclose(fresh[name], boxes_array(boxes))
    out, root, job = tmp_path / "out", tmp_path / "jobs", f"cli-{export}"
    address = ray_session.get_runtime_context().gcs_address
    command = [
        TESSERA,
        "predict",
        str(tmp_path / "images"),
        *("--model", "reference/color-boxes", "--out", str(out), "--format", export),
        *("--job-id", job, "--journal-dir", str(root), "--address", address),
        *("--batch-size", "1", "--no-progress"),
    ]
    # 1) the driver is killed (SIGKILL) once the journal shows some items done
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while done_count(root / job) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    done_before = done_count(root / job)
    assert 3 <= done_before < 60, f"the driver was not killed mid-job ({done_before} done)"
    # 2) the resume, from the record alone: the model, inputs and outputs are the job's
    resumed = subprocess.run(
        [TESSERA, "predict", "--resume", job, "--journal-dir", str(root), "--address", address]
        + ["--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 60 - done_before  # only the missing ones were predicted
    assert summary["outputs"]["job"]["done_before"] == done_before
    assert summary["outputs"]["job"]["done"] == 60
    assert f"job {job}" in resumed.stdout
    # 3) the export holds every image exactly once, with a fresh run's boxes
    if export == "jsonl":
        assert_each_once_with_boxes(jsonl_lines(out), fresh)
    else:
        dataset = json.loads((out / "coco_dataset.json").read_text())
        names = {image["id"]: Path(image["file_name"]).name for image in dataset["images"]}
        assert Counter(names.values()) == dict.fromkeys(fresh, 1)
        found: dict[str, list] = {name: [] for name in fresh}
        for annotation in dataset["annotations"]:
            x, y, w, h = annotation["bbox"]
            found[names[annotation["image_id"]]].append([x, y, x + w, y + h])
        for name, boxes in found.items():
            got = sort_xyxy(np.array(boxes, np.float32).reshape(-1, 4))
            np.testing.assert_allclose(got, fresh[name], atol=0.01)
    # 4) the same job with another model is refused from the CLI, naming the difference
    code = main(
        ["predict", "--resume", job, "--journal-dir", str(root)]
        + ["--model", "reference/color-masks", "--no-progress"]
    )
    assert code == 2
    assert "model: 'reference/color-boxes' in the job, 'reference/color-masks' now" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------- in-process
class Crash(RuntimeError):
    """What the patched journal raises, as if the process died before its commit."""


def crash_after(monkeypatch, blocks: int) -> None:
    """The journal commits ``blocks`` blocks, then fails (after the other sinks wrote)."""
    original = jobs.JobJournal.record_done
    calls = {"n": 0}

    def record_done(self, predictions):
        calls["n"] += 1
        if calls["n"] > blocks:
            raise Crash("killed between the export's write and the journal's commit")
        return original(self, predictions)

    monkeypatch.setattr(jobs.JobJournal, "record_done", record_done)


def test_engine_resume_after_a_crash_between_export_and_journal(reference_model, tmp_path):
    truth = scenes(tmp_path / "images", 12)
    fresh = fresh_boxes(reference_model, tmp_path / "images")
    out, root = tmp_path / "out", tmp_path / "jobs"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SessionError, match="journal's"):
        crash_after(patch, 3)
        reference_model.predict(
            str(tmp_path / "images"),
            out=out,
            job_id="crashed",
            journal_dir=root,
            batch_size=2,
            progress=False,
        )
    assert done_count(root / "crashed") == 6
    # the crashed run's export holds block 4 too, which the journal never recorded
    assert len(jsonl_lines(out)) == 8
    results = reference_model.resume("crashed", journal_dir=root, batch_size=2, progress=False)
    assert sorted(p.name for p in results) == sorted(truth)[6:]  # the missing ones only
    assert results.outputs["job"] == {
        "job_id": "crashed",
        "directory": str(root / "crashed"),
        "resumed": True,
        "done_before": 6,
        "done_now": 6,
        "done": 12,
    }
    lines = jsonl_lines(out)
    assert [line["name"] for line in lines] == sorted(truth)  # input order, each once
    assert_each_once_with_boxes(lines, fresh)
    # a second resume has nothing left to predict and leaves the export as it is
    again = reference_model.resume("crashed", journal_dir=root, progress=False)
    assert len(again) == 0 and again.outputs["job"]["done_before"] == 12
    assert_each_once_with_boxes(jsonl_lines(out), fresh)


def test_a_detached_session_killed_with_its_actor_resumes(reference_model, tmp_path):
    import ray

    scenes(tmp_path / "images", 24, seed=8)
    fresh = fresh_boxes(reference_model, tmp_path / "images")
    out, root = tmp_path / "out", tmp_path / "jobs"
    session = reference_model.predict_detached(
        str(tmp_path / "images"),
        out=out,
        format="parquet",
        job_id="detached",
        journal_dir=root,
        batch_size=2,
        max_buffered_blocks=1,  # nobody reads: production stalls after a few blocks
        progress=False,
    )
    assert session.status()["context"]["job"]["job_id"] == "detached"
    deadline = time.monotonic() + 120
    while done_count(root / "detached") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    actor = ray.get_actor(session_actor_name(session.id), namespace=NAMESPACE)
    ray.kill(actor)
    while True:  # ray.kill returns at once: count what is done once the actor is gone
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            break
        time.sleep(0.05)
    session.detach()
    done_before = done_count(root / "detached")
    assert 2 <= done_before < 24
    assert not (out / "parquet").exists()  # the Parquet export writes only at the end
    results = engine.resume("detached", model=reference_model, journal_dir=root, progress=False)
    assert len(results) == 24 - done_before
    assert results.outputs["job"]["done"] == 24
    import pyarrow.parquet as pq

    table = pq.read_table(out / "parquet")
    assert Counter(table.column("name").to_pylist()) == dict.fromkeys(fresh, 1)
    for row in table.to_pylist():
        boxes = np.array(row["xyxy"], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(sort_xyxy(boxes), fresh[row["name"]], atol=0.01)


def test_resumes_that_cannot_be_are_refused_naming_why(reference_model, tmp_path):
    scenes(tmp_path / "images", 3)
    root = tmp_path / "jobs"
    reference_model.predict(
        str(tmp_path / "images"), out=tmp_path / "out", job_id="j", journal_dir=root, conf=0.5
    )
    with pytest.raises(ValueError, match=r"conf: 0\.5 in the job, 0\.25 now"):
        reference_model.resume("j", journal_dir=root, conf=0.25)
    with pytest.raises(ValueError, match=r"model: 'reference/color-boxes' in the job, 'reference/"):
        engine.resume("j", model="reference/color-masks", journal_dir=root)
    with pytest.raises(ValueError, match=r"no job 'nope' in .*jobs"):
        engine.resume("nope", journal_dir=root)
    with pytest.raises(ValueError, match="job 'j' already exists"):
        reference_model.predict(
            str(tmp_path / "images"), out=tmp_path / "o2", job_id="j", journal_dir=root
        )
    image = np.zeros((20, 20, 3), np.uint8)
    reference_model.predict([image], out=tmp_path / "arr", job_id="arrays", journal_dir=root)
    with pytest.raises(ValueError, match="job 'arrays' cannot be resumed: in-memory images"):
        reference_model.resume("arrays", journal_dir=root)
    # a folder that gained an image no longer resolves to the job's items
    scenes(tmp_path / "images", 4)
    with pytest.raises(ValueError, match=r"3 item\(s\) in the job, 4 now; new: 3:.*scene_003"):
        reference_model.resume("j", journal_dir=root)


# --------------------------------------------------------------------------- uploads
@pytest.fixture
def acme(monkeypatch):
    with AcmeStandin() as standin:
        monkeypatch.setenv("ACME_SERVER", standin.url)
        monkeypatch.setenv("ACME_TOKEN", standin.token)
        yield standin


def test_an_upload_job_resumed_ends_with_each_image_once(reference_model, acme, tmp_path):
    import io

    ids = []
    rng = np.random.default_rng(21)
    for i in range(8):
        buffer = io.BytesIO()
        Image.fromarray(draw_scene(40, 48, random_boxes(rng, 40, 48, 2))).save(buffer, "PNG")
        ids.append(acme.add_image(f"scene_{i}.png", buffer.getvalue(), dataset="street"))
    root = tmp_path / "jobs"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SessionError):
        crash_after(patch, 2)  # blocks 1-2 journaled; block 3 uploaded, not journaled
        reference_model.predict(
            acme_image_ids=ids,
            upload="create",
            to="acme",
            upload_options={"set_name": "resumed", **FAST},
            job_id="upload-job",
            journal_dir=root,
            batch_size=2,
            progress=False,
        )
    assert (root / "upload-job" / "journal.sqlite").exists()  # the upload's, same job id
    created = acme.set_named("resumed")
    before = Counter(a["image_id"] for a in acme.annotations_of(created["id"]))
    assert sum(before.values()) == 6 and max(before.values()) == 1
    results = reference_model.resume("upload-job", journal_dir=root, progress=False)
    assert len(results) == 4  # blocks 3 and 4
    report = results.outputs["upload:acme"]
    assert report["skipped_already_delivered"] == 6  # re-fed 4, re-predicted 2
    assert report["delivered"] == 2
    stored = acme.annotations_of(acme.set_named("resumed")["id"])
    assert Counter(a["image_id"] for a in stored) == dict.fromkeys(ids, 1)


# --------------------------------------------------------------------------- keys
def test_keys_map_items_to_predictions_and_cut_partly_done_segments():
    from engine.detections import Detections
    from engine.prediction import Prediction
    from engine.sources.items import Item

    image = Item(index=0, source="file", name="a.png", path="/d/a.png")
    segment = Item(
        index=1,
        source="video",
        name="v.mp4",
        path="/d/v.mp4",
        frames=(0, 2, 4, 6, 8),
        seek_frame=0,
        seek_pts=0,
        last_frame=8,
    )
    keys = [key for item in (image, segment) for _, key in jobs.item_keys(item)]
    assert keys == ["0:/d/a.png:", "1:/d/v.mp4:0", "2:/d/v.mp4:2", "3:/d/v.mp4:4"] + [
        "4:/d/v.mp4:6",
        "5:/d/v.mp4:8",
    ]
    frame = Prediction(
        Detections.empty(),
        ["red"],
        index=3,
        name="v.mp4",
        path="/d/v.mp4",
        frame_index=4,
    )
    assert jobs.prediction_key(frame) == keys[3]
    # rows 1 and 4 done: the image and two runs of the segment remain, rows kept
    left = jobs.remaining_items([image, segment], {keys[1], keys[4]})
    assert [(item.index, item.frames) for item in left] == [(0, None), (2, (2, 4)), (5, (8,))]
    assert all(item.seek_frame == 0 for item in left[1:])
    assert jobs.remaining_items([image, segment], set(keys)) == []
    assert jobs.changed_items(keys, keys) is None
    assert (
        jobs.changed_items(keys[:2], keys[:1]) == "2 item(s) in the job, 1 now; gone: 1:/d/v.mp4:0"
    )
