"""Prediction sessions: detached streaming, next() semantics, stop, backpressure, attach."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image
from scenes import boxes_array, draw_scene, random_boxes, sort_xyxy

import engine
from engine.models.reference import ColorBoxDetector
from engine.session import SessionError, session_actor_name

H, W = 60, 80


class SlowBoxes(ColorBoxDetector):
    """The reference detector, ``delay`` seconds slower per batch."""

    def __init__(self, delay: float = 0.2) -> None:
        super().__init__()
        self.delay = delay

    def infer(self, images, conf):
        time.sleep(self.delay)
        return super().infer(images, conf)


class FailsToLoadWhenFlagged(ColorBoxDetector):
    """Loads at deploy; fails to load in a session once the flag file exists."""

    def __init__(self, flag: str) -> None:
        super().__init__()
        self.flag = flag

    def load(self, device):
        if os.path.exists(self.flag):
            raise OSError(f"weights unreadable ({self.flag})")


class CrashesOnSmallImages(ColorBoxDetector):
    """Kills its own worker process on 32x32 images once the flag file exists."""

    def __init__(self, flag: str) -> None:
        super().__init__()
        self.flag = flag

    def infer(self, images, conf):
        if os.path.exists(self.flag) and images[0].shape[:2] == (32, 32):
            os._exit(1)
        return super().infer(images, conf)


def scenes(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        boxes = random_boxes(rng, H, W, 3, max_side=20)
        out.append((draw_scene(H, W, boxes), boxes))
    return out


@pytest.fixture(scope="module")
def slow_model(ray_session):
    model = engine.deploy(SlowBoxes, delay=0.3)
    yield model
    model.close()


def session_actors_alive(session_id: str) -> list[str]:
    """Names of the session's actors (itself, its model workers) still registered alive."""
    prefix = session_actor_name(session_id)
    alive = []
    for name in [prefix] + [f"{prefix}-worker-{i}" for i in range(4)]:
        try:
            ray.get_actor(name, namespace="tessera")
        except ValueError:
            continue
        alive.append(name)
    return alive


def wait_until(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_detached_session_streams_every_prediction_in_input_order(slow_model):
    from engine.client import ModelClient, SessionClient

    data = scenes(12)
    session = slow_model.predict_detached([d[0] for d in data], batch_size=2)
    assert isinstance(slow_model, ModelClient) and isinstance(session, SessionClient)
    assert not session.is_done()  # it returned while the job runs
    predictions = list(session)
    assert [p.index for p in predictions] == list(range(12))
    for prediction, (_, boxes) in zip(predictions, data):
        np.testing.assert_allclose(sort_xyxy(prediction.boxes), boxes_array(boxes))
    np.testing.assert_array_equal(predictions[3].load_image(), data[3][0])
    assert session.is_done()
    assert session.progress() == {"done": 12, "total": 12}
    status = session.status()
    assert status["state"] == "done" and status["failed"] == []
    assert status["context"]["input"]["items"] == 12
    assert status["context"]["settings"]["batch_size"] == 2
    assert set(status["resources"]) == {"gpu", "ram", "object_store"}
    session.close()
    assert wait_until(lambda: not session_actors_alive(session.id))


def test_unordered_session_delivers_each_prediction_once(slow_model):
    data = scenes(9, seed=1)
    with slow_model.predict_detached([d[0] for d in data], batch_size=2, ordered=False) as s:
        assert sorted(p.index for p in s) == list(range(9))


def test_next_blocks_times_out_and_stops(slow_model):
    data = scenes(3, seed=2)
    with slow_model.predict_detached([d[0] for d in data], batch_size=1) as session:
        assert session.next(block=False) is None  # the session's model is still loading
        with pytest.raises(TimeoutError):
            session.next(timeout=0.05)
        got = [session.next(timeout=120) for _ in range(3)]
        assert [p.index for p in got] == [0, 1, 2]
        with pytest.raises(StopIteration):
            session.next()
        with pytest.raises(StopIteration):
            session.next(block=False)


def test_per_item_failures_land_in_status_and_predictions(ray_session, tmp_path):
    good = draw_scene(H, W, [("red", 5, 5, 20, 20)])
    Image.fromarray(good).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with engine.deploy("reference/color-boxes") as model:
        inputs = [tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "gone.png"]
        with model.predict_detached(inputs, batch_size=2) as session:
            predictions = list(session)
            status = session.status()
    assert [p.error is None for p in predictions] == [True, False, False]
    assert status["state"] == "done"
    assert [f["name"] for f in status["failed"]] == ["bad.png", "gone.png"]
    assert "not found" in status["failed"][1]["error"]


def test_fatal_error_surfaces_in_status_and_iteration(ray_session, tmp_path):
    flag = tmp_path / "broken"
    with engine.deploy(FailsToLoadWhenFlagged, flag=str(flag)) as model:
        flag.write_text("x")
        session = model.predict_detached([np.zeros((8, 8, 3), np.uint8)])
        with pytest.raises(SessionError, match="weights unreadable"):
            list(session)
        status = session.status()
        assert status["state"] == "error"
        assert "weights unreadable" in status["error"] and "Traceback" in status["error"]
        session.close()


def test_stop_halfway_keeps_buffered_predictions_and_frees_every_actor(slow_model):
    data = scenes(40, seed=3)
    session = slow_model.predict_detached([d[0] for d in data], batch_size=2)
    first = session.next(timeout=120)
    assert wait_until(lambda: session_actors_alive(session.id))  # its workers run
    session.stop()
    assert session.is_done() and session.status()["state"] == "stopped"
    rest = list(session)  # what was buffered stays available after stop
    indices = [first.index] + [p.index for p in rest]
    assert indices == list(range(len(indices))) and len(indices) < 40
    assert all(p.error is None for p in rest)
    assert wait_until(lambda: not session_actors_alive(session.id)), "actors left alive"


def test_slow_consumer_stalls_production_at_the_buffer_bound(reference_model):
    images = [np.zeros((16, 16, 3), np.uint8)] * 40
    with reference_model.predict_detached(images, batch_size=1, max_buffered_blocks=2) as session:
        assert wait_until(lambda: session.progress()["done"] >= 2, 60)
        time.sleep(3)  # nobody reads: production must wait for the consumer
        stalled = session.progress()["done"]
        assert stalled == 2
        assert session.status()["resources"]["object_store"]["used"] > 0
        assert len(list(session)) == 40


def test_a_second_process_attaches_and_receives_the_rest_none_twice(slow_model, tmp_path):
    data = scenes(10, seed=4)
    session = slow_model.predict_detached([d[0] for d in data], batch_size=3)
    first = [session.next(timeout=120) for _ in range(4)]  # part of a 3-row block too
    session_id = session.detach()
    script = tmp_path / "reader.py"
    script.write_text(
        "import sys, engine\n"
        "s = engine.attach(sys.argv[1], address=sys.argv[2])\n"
        "print(' '.join(str(p.index) for p in s))\n"
        "s.close()\n"
    )
    address = ray.get_runtime_context().gcs_address
    result = subprocess.run(
        [sys.executable, str(script), session_id, address],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rest = [int(i) for i in result.stdout.split()]
    assert [p.index for p in first] + rest == list(range(10))
    assert wait_until(lambda: not session_actors_alive(session_id))


def test_attach_to_an_unknown_session_is_a_clear_error(ray_session):
    with pytest.raises(ValueError, match="no prediction session 'nope'"):
        engine.attach("nope")


def test_bad_session_options_are_clear_errors(slow_model):
    with pytest.raises(ValueError, match="max_buffered_blocks"):
        slow_model.predict_detached(np.zeros((8, 8, 3), np.uint8), max_buffered_blocks=0)
    with pytest.raises(TypeError, match="unknown option"):
        slow_model.predict_detached(np.zeros((8, 8, 3), np.uint8), bogus=1)


def test_a_worker_that_keeps_crashing_fails_the_job_instead_of_hanging(ray_session, tmp_path):
    flag = tmp_path / "crash"
    with engine.deploy(CrashesOnSmallImages, flag=str(flag)) as model:
        flag.write_text("x")
        with pytest.raises(SessionError, match=r"session local: the session failed: \S*Actor"):
            model.predict([np.zeros((32, 32, 3), np.uint8)] * 4, progress=False)


def test_a_dropped_session_frees_its_actors(slow_model):
    import gc

    session = slow_model.predict_detached([d[0] for d in scenes(20, seed=5)], batch_size=2)
    session.next(timeout=120)
    session_id = session.id
    assert session_actors_alive(session_id)
    del session
    gc.collect()
    assert wait_until(lambda: not session_actors_alive(session_id)), (
        f"dropped session lives on: {session_actors_alive(session_id)}"
    )
