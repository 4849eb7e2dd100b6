"""Many nodes on one machine, and a node lost mid-job (tests/cluster_fixture.py).

The fixture cluster (a head and two worker nodes, 1 CPU each, each its own raylet) is
driven from subprocesses: tests/cluster_driver.py through the public API, and the
``tessera`` command line, both joining it with ``RAY_ADDRESS`` / ``--address``. This test
process stays on its own in-process Ray (``ray_session``), which gives the one-node
answer. Every job predicts generated images (or a generated video) whose boxes are known.

A node is lost the hard way: the raylet of a worker node that runs a model worker is
SIGKILLed while the job runs (by the driver once the workers have predicted K images, or
by the test once the export holds K lines); the fixture then adds a fresh worker node, so
every test starts on three nodes.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from acme_standin import AcmeStandin
from cluster_fixture import ray_cluster  # noqa: F401
from PIL import Image
from scenes import draw_scene, random_boxes
from videos import write_video

#: One test process runs every test of the fixture cluster (``pytest -n``, loadgroup).
pytestmark = pytest.mark.xdist_group("cluster")

DRIVER = str(Path(__file__).with_name("cluster_driver.py"))
TESSERA = str(Path(sys.executable).parent / "tessera")
FAST = {"requests_per_second": 200.0, "max_in_flight": 8, "num_uploaders": 2}
#: Seconds a driver subprocess may run (a crowded 2-core machine runs three nodes).
DRIVER_TIMEOUT_S = 420
#: What two runs of the same job must agree on exactly (not the model's timing).
COMPARED = ("index", "name", "path", "height", "width", "error", "boxes", "scores")
COMPARED += ("classes", "class_idxs", "frame_index", "track_ids")


def write_scenes(
    folder: Path, count: int, size: tuple[int, int] = (48, 64), seed: int = 3
) -> dict[str, list]:
    """``count`` PNG images of known rectangles in ``folder``: name -> boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, *size, 3, min_side=6, max_side=16)
        name = f"scene_{i:03d}.png"
        Image.fromarray(draw_scene(*size, boxes)).save(folder / name)
        truth[name] = boxes
    return truth


def objects(classes: list[str], boxes: list) -> list[tuple]:
    """(class, x1, y1, x2, y2) of each object, sorted: comparable with the truth."""
    return sorted((c, *(round(float(v), 2) for v in box)) for c, box in zip(classes, boxes))


def known(boxes: list) -> list[tuple]:
    return objects([b[0] for b in boxes], [b[1:] for b in boxes])


def compared(prediction: dict[str, Any]) -> dict[str, Any]:
    return {key: prediction.get(key) for key in COMPARED}


def drive(cluster, tmp_path: Path, mode: str, inputs: Any, **spec: Any) -> dict[str, Any]:
    """Run tests/cluster_driver.py on the cluster; restore the cluster if it killed a node."""
    spec = {
        "mode": mode,
        "inputs": inputs,
        "num_workers": 3,
        "progress": str(tmp_path / "progress.jsonl"),
        "result": str(tmp_path / "result.json"),
        "cluster": str(cluster.write_description(tmp_path / "cluster.json")),
        **spec,
    }
    env = cluster.env(**spec.pop("env", {}))  # the stand-in's token stays out of the file
    (tmp_path / "spec.json").write_text(json.dumps(spec, default=str))
    try:
        run = subprocess.run(
            [sys.executable, DRIVER, str(tmp_path / "spec.json")],
            env=env,
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
        result_file = Path(spec["result"])
        assert result_file.exists(), f"the driver wrote no result:\n{run.stderr[-4000:]}"
        record = json.loads(result_file.read_text())
    finally:
        _restore(cluster, tmp_path)
    assert "error" not in record, f"the job failed: {record['error']}\n{run.stderr[-3000:]}"
    assert "kill_error" not in record, record["kill_error"]
    return record


def _restore(cluster, tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    killed = json.loads(result.read_text()).get("killed") if result.exists() else None
    if killed:
        cluster.mark_killed(killed["node"])
    cluster.restore()


def assert_node_lost_and_workers_replaced(record: dict[str, Any]) -> None:
    """A worker node running model workers died mid-job; the job's workers ran elsewhere."""
    killed = record["killed"]
    assert killed["node"] != record["driver_node"]
    lost = [a for a in killed["actors_on_node"] if a["class"] == "ModelWorker"]
    assert lost, f"the killed node ran no model worker: {killed}"
    lost_pids = {a["pid"] for a in lost}
    # replacements of the lost workers (processes that were not running at the kill)
    # predicted the rest of the job
    assert set(record["model_pids"]) - {a["pid"] for a in killed["actors"]}, (
        "no replacement worker predicted anything"
    )
    if "actors_at_end" in record:
        at_end = [a for a in record["actors_at_end"] if a["class"] == "ModelWorker"]
        assert len(at_end) == record["num_workers"]
        assert all(a["node"] != killed["node"] for a in at_end)
        assert not lost_pids & {a["pid"] for a in at_end}


# ---------------------------------------------------------------------- 1 node vs 3 nodes
#: The same-job images: 12 distinct 640x480 scenes, 12 copies each (cheap to write).
SAME_JOB_HEIGHT, SAME_JOB_WIDTH, SAME_JOB_COUNT = 480, 640, 144


@pytest.fixture(scope="module")
def three_node_run(ray_cluster, tmp_path_factory):  # noqa: F811
    """One job on the three nodes, its driver's memory measured: images, truth, record.

    144 images of 640x480 (133 MB of decoded pixels) with known rectangles; the model
    workers are left to their default (one per node). One run serves the comparison with
    one node, the spread of the workers and the driver's memory.
    """
    folder = tmp_path_factory.mktemp("same_job")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(9)
    truth = {}
    for i in range(12):
        boxes = random_boxes(rng, SAME_JOB_HEIGHT, SAME_JOB_WIDTH, 4, min_side=20, max_side=60)
        buffer = io.BytesIO()
        Image.fromarray(draw_scene(SAME_JOB_HEIGHT, SAME_JOB_WIDTH, boxes)).save(buffer, "PNG")
        for copy in range(SAME_JOB_COUNT // 12):
            name = f"img_{i:02d}_{copy:02d}.png"
            (images / name).write_bytes(buffer.getvalue())
            truth[name] = boxes
    record = drive(
        ray_cluster,
        folder,
        "predict",
        [str(images)],
        num_workers=None,
        options={"batch_size": 4},
        measure_memory=True,
    )
    return images, truth, record


def test_one_node_and_three_nodes_give_identical_predictions(reference_model, three_node_run):
    from engine.prediction_json import prediction_to_json

    images, truth, record = three_node_run
    one_node = [
        prediction_to_json(p, self_contained=False)
        for p in reference_model.predict(str(images), batch_size=4, progress=False)
    ]
    three_nodes = record["predictions"]
    assert len(record["nodes"]) == 3
    # exactly the same answers, in the same order: boxes, scores, classes, everything
    assert [compared(p) for p in three_nodes] == [compared(p) for p in one_node]
    # and they are the right ones
    assert [p["name"] for p in three_nodes] == sorted(truth)
    for prediction in three_nodes:
        assert prediction["error"] is None
        assert objects(prediction["classes"], prediction["boxes"]) == known(
            truth[prediction["name"]]
        )


def test_model_workers_spread_over_the_nodes(three_node_run):
    _, _, record = three_node_run
    workers = [a for a in record["actors_at_start"] if a["class"] == "ModelWorker"]
    assert record["num_workers"] == len(workers) == 3  # the default on 3 CPU nodes
    # one model worker per node (3 workers, 3 nodes), and the batches went to all of them
    assert sorted(a["node"] for a in workers) == sorted(record["nodes"])
    assert set(record["model_nodes"]) == set(record["nodes"])


# ---------------------------------------------------------------------- the driver's memory
def test_the_driver_holds_references_not_pixels(three_node_run):
    # the driver's resident memory while the job ran grew by far less than the pixels: it
    # only held references to blocks and the small prediction rows
    _, _, record = three_node_run
    assert len(record["predictions"]) == SAME_JOB_COUNT
    pixels = SAME_JOB_COUNT * SAME_JOB_HEIGHT * SAME_JOB_WIDTH * 3
    growth = record["rss_peak"] - record["rss_before"]
    assert growth < pixels / 8, (
        f"driver RSS grew {growth / 2**20:.0f} MiB for {pixels / 2**20:.0f} MiB of pixels"
    )


# ---------------------------------------------------------------------- a node lost mid-job
@pytest.fixture
def acme(monkeypatch):
    with AcmeStandin() as standin:
        yield standin


def seed_acme(acme: AcmeStandin, count: int, seed: int) -> dict[int, list]:
    """Images of known rectangles on the stand-in: id -> boxes."""
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(count):
        boxes = random_boxes(rng, 48, 64, 3, min_side=6, max_side=16)
        buffer = io.BytesIO()
        Image.fromarray(draw_scene(48, 64, boxes)).save(buffer, format="PNG")
        truth[acme.add_image(f"scene_{i}.png", buffer.getvalue(), dataset="street")] = boxes
    return truth


def check_exactly_once(record, truth: dict[int, list], acme, set_name: str, out: Path) -> None:
    """Each acme image: one prediction (right boxes), one export line, one annotation."""
    ids = list(truth)
    predictions = record["predictions"]
    # 1) every item exactly once, by index and by image, with its known boxes
    assert sorted(p["index"] for p in predictions) == list(range(len(ids)))
    assert Counter(p["url"] for p in predictions) == {f"acme://images/{i}": 1 for i in ids}
    for prediction in predictions:
        assert prediction["error"] is None, prediction["error"]
        image_id = int(prediction["url"].rsplit("/", 1)[1])
        assert objects(prediction["classes"], prediction["boxes"]) == known(truth[image_id])
    # 2) the export: each item once
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert Counter(line["url"] for line in lines) == {f"acme://images/{i}": 1 for i in ids}
    # 3) the upload: each image annotated once, by one job
    created = acme.set_named(set_name)
    assert created is not None
    stored = acme.annotations_of(created["id"])
    assert Counter(a["image_id"] for a in stored) == dict.fromkeys(ids, 1)
    assert len({a["job"] for a in stored}) == 1


def lost_node_job(ray_cluster, acme, tmp_path, mode: str) -> None:  # noqa: F811
    truth = seed_acme(acme, 40, seed=21 if mode == "predict" else 22)
    out = tmp_path / "out"
    record = drive(
        ray_cluster,
        tmp_path,
        mode,
        None,
        options={"batch_size": 2, "acme_image_ids": list(truth)},
        outputs={
            "out": str(out),
            "format": "jsonl",
            "upload": "create",
            "to": "acme",
            "upload_options": {
                "set_name": f"{mode} run",
                "journal_dir": str(tmp_path / "jobs"),
                **FAST,
            },
        },
        delay=0.2,
        kill_after=10,
        env={"ACME_SERVER": acme.url, "ACME_TOKEN": acme.token},
    )
    assert_node_lost_and_workers_replaced(record)
    check_exactly_once(record, truth, acme, f"{mode} run", out)


def test_a_node_lost_mid_predict_loses_and_duplicates_nothing(ray_cluster, acme, tmp_path):  # noqa: F811
    lost_node_job(ray_cluster, acme, tmp_path, "predict")


def test_a_node_lost_mid_detached_session_loses_and_duplicates_nothing(
    ray_cluster,  # noqa: F811
    acme,
    tmp_path,
):
    lost_node_job(ray_cluster, acme, tmp_path, "detached")


def test_a_node_lost_mid_track_gives_each_selected_frame_once(
    reference_model,
    ray_cluster,  # noqa: F811
    tmp_path,
):
    from engine.prediction_json import prediction_to_json

    video = tmp_path / "clip.mp4"
    write_video(video, num_frames=48, size=(160, 120), gop=8)
    record = drive(
        ray_cluster,
        tmp_path,
        "track",
        [str(video)],
        options={"batch_size": 2, "stride": 2},
        delay=0.2,
        kill_after=6,
    )
    assert_node_lost_and_workers_replaced(record)
    assert record["errors"] == [None]
    frames = record["predictions"]
    assert [p["frame_index"] for p in frames] == list(range(0, 48, 2))  # each once, in order
    assert all(p["error"] is None and p["track_ids"] is not None for p in frames)
    # the same detections and the same tracks as the same job on one node, undisturbed
    (one_node,) = reference_model.track([str(video)], batch_size=2, stride=2, progress=False)
    expected = [prediction_to_json(p, self_contained=False) for p in one_node.frames]
    assert [compared(p) for p in frames] == [compared(p) for p in expected]
    assert sum(len(p["boxes"]) for p in frames) > len(frames)  # the rectangles were found


# ---------------------------------------------------------------------- the command line
def test_cli_predict_on_the_cluster_survives_a_lost_node(ray_cluster, tmp_path):  # noqa: F811
    truth = write_scenes(tmp_path / "images", 80, seed=4)
    out = tmp_path / "out"
    command = [
        TESSERA,
        "predict",
        str(tmp_path / "images"),
        "--address",
        ray_cluster.address,
        "--model",
        "reference/color-boxes",
        "--num-workers",
        "3",
        "--batch-size",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = ray_cluster.env()
    env.pop("RAY_ADDRESS")  # the --address flag alone names the cluster
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = None
    try:
        # kill a worker node running a model worker once the export holds 10 lines
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            written = out / "predictions.jsonl"
            if written.exists() and len(written.read_text().splitlines()) >= 10:
                victim = ray_cluster.worker_node_running("ModelWorker")
                ray_cluster.kill_raylet(victim)
                break
            time.sleep(0.05)
        stdout, stderr = process.communicate(timeout=max(1, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        ray_cluster.restore()
    assert victim is not None, "the job ended before a node could be killed"
    assert process.returncode == 0, stderr.decode()[-3000:]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert Counter(line["name"] for line in lines) == dict.fromkeys(truth, 1)
    assert sorted(line["index"] for line in lines) == list(range(len(truth)))
    for line in lines:
        assert objects(line["classes"], line["boxes"]) == known(truth[line["name"]])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == summary["predicted"] == len(truth)
