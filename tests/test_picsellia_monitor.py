"""``tessera serve --monitor picsellia``: every answered image reaches the deployment once.

A Picsellia stand-in (tests/picsellia_standin.py: a real HTTP server on 127.0.0.1 playing
the main host and the monitoring host) receives what the server's monitor sends; it
injects 429 with Retry-After, 5xx, dropped answers and an expired JWT. The server runs on
Ray Serve over the session's Ray (`serve.app.run`), and once as a real ``tessera serve``
process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from picsellia_standin import PicselliaStandin
from scenes import draw_scene, random_boxes
from serve_helpers import free_port, png_bytes, poll

from engine.cli import main
from engine.models.reference import COLORS

H, W = 96, 128
ROOT = Path(__file__).resolve().parents[1]
LABELS = {str(i + 1): name for i, name in enumerate(COLORS)}


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return draw_scene(H, W, random_boxes(rng, H, W, 3))


def post_image(url: str, image: np.ndarray, name: str) -> dict:
    answer = requests.post(
        f"{url}/predict",
        data=png_bytes(image),
        headers={"Content-Type": "image/png"},
        params={"name": name},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def expected_boxes(prediction: dict) -> list[list[int]]:
    """Picsellia's integer ``[top, left, bottom, right]`` of the server's boxes."""
    return [[round(y1), round(x1), round(y2), round(x2)] for x1, y1, x2, y2 in prediction["boxes"]]


@pytest.fixture
def standin():
    with PicselliaStandin(labels=LABELS, shadow_labels=LABELS) as server:
        yield server


def serve_monitored(port: int, monitor_options: dict, shadow: bool = False) -> str:
    from serve.app import run

    run(
        "reference/color-boxes",
        host="127.0.0.1",
        port=port,
        shadow_model="reference/color-boxes" if shadow else None,
        monitor="picsellia",
        monitor_options=monitor_options,
        max_batch_size=4,
    )
    return f"http://127.0.0.1:{port}"


def test_every_answered_image_reaches_the_deployment_once_through_faults(
    ray_session, standin, tmp_path
):
    from ray import serve

    dead = tmp_path / "dead.jsonl"
    url = serve_monitored(
        free_port(),
        {
            "deployment_id": standin.deployment_id,
            "api_token": standin.api_token,
            "host": standin.url,
            "dead_letter": str(dead),
            "tags": ["online"],
        },
        shadow=True,
    )
    try:
        images = {f"img_{i}.png": scene(i) for i in range(6)}
        standin.fail_next(429, count=2, retry_after=0.05)
        standin.fail_next(500)
        standin.fail_next(503)
        standin.drop_after_write(1)
        answers = {}
        for index, (name, image) in enumerate(images.items()):
            if index == 3:
                standin.expire_jwt()
            answers[name] = post_image(url, image, name)["predictions"][0]
        try:
            poll(lambda: len({b["filename"] for b in standin.stored}) >= len(images), timeout=60)
        except AssertionError:
            info = requests.get(f"{url}/info", timeout=30).json()["monitor"]
            held = [b["filename"] for b in standin.stored]
            raise AssertionError(f"held {held}; counts {standin.counts}; monitor {info}") from None
        time.sleep(0.5)  # anything sent twice would land by now
        info = requests.get(f"{url}/info", timeout=30).json()["monitor"]
    finally:
        serve.shutdown()

    bodies = {}
    for body in standin.stored:
        assert body["filename"] not in bodies, f"{body['filename']} was monitored twice"
        bodies[body["filename"]] = body
    assert sorted(bodies) == sorted(images)
    for name, body in bodies.items():
        answer = answers[name]
        assert body["image"] == png_bytes(images[name])
        assert (body["height"], body["width"]) == (H, W) and body["content_type"] == "IMAGE/PNG"
        assert body["raw_predictions"]["detection_boxes"] == expected_boxes(answer)
        ids = {v: int(k) for k, v in LABELS.items()}
        assert body["raw_predictions"]["detection_classes"] == [ids[c] for c in answer["classes"]]
        assert body["latency"] > 0 and body["shadow_latency"] > 0
        assert body["shadow_raw_predictions"]["detection_boxes"] == expected_boxes(answer)
        assert "online" in body["tags"]
    assert standin.counts[409] >= 1, "the dropped answer's retry was recognised as held"
    assert info["started"] and info["overflow"] == 0
    assert not dead.exists() or dead.read_text() == ""


def test_a_dead_monitoring_host_never_fails_a_request_and_what_overflows_is_kept(
    ray_session, tmp_path
):
    from ray import serve

    dead = tmp_path / "dead.jsonl"
    url = serve_monitored(
        free_port(),
        {
            "deployment_id": "d-unreachable",
            "api_token": "pcs-token",
            "monitoring_host": f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "label_ids": {name: i + 1 for i, name in enumerate(COLORS)},
            "queue_size": 2,
            "num_senders": 1,
            "batch_size": 1,
            "dead_letter": str(dead),
        },
    )
    try:
        for i in range(12):
            post_image(url, scene(i), f"img_{i}.png")
        info = requests.get(f"{url}/info", timeout=30).json()["monitor"]
    finally:
        serve.shutdown()
    assert info["started"] and info["delivered"] == 0 and info["overflow"] >= 1
    assert info["queued"] + info["overflow"] == 12
    # the replica closed its monitor as Serve stopped it: what was queued or in flight is
    # dead-lettered too, so every image of the 12 is accounted for once
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(line["key"] for line in lines) == sorted({line["key"] for line in lines})
    assert len(lines) == 12
    reasons = [line["reason"] for line in lines]
    assert sum("queue was full" in r for r in reasons) == info["overflow"]


def test_an_unknown_monitor_or_missing_token_is_refused_before_the_server_starts(
    monkeypatch, capsys
):
    monkeypatch.delenv("PICSELLIA_API_TOKEN", raising=False)
    started = time.perf_counter()
    code = main(["serve", "--model", "reference/color-boxes", "--monitor", "nosuch"])
    assert code == 2 and "picsellia" in capsys.readouterr().err
    code = main(["serve", "--model", "reference/color-boxes", "--monitor", "picsellia"])
    assert code == 2 and "PICSELLIA_API_TOKEN" in capsys.readouterr().err
    assert time.perf_counter() - started < 30  # no Ray, no model: refused at once


def test_tessera_serve_monitors_through_the_command_line(standin, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PICSELLIA_API_TOKEN": standin.api_token,
        "PICSELLIA_HOST": standin.url,
    }
    env.pop("RAY_ADDRESS", None)
    command = [
        str(Path(sys.executable).with_name("tessera")),
        "serve",
        "--model",
        "reference/color-boxes",
        "--port",
        str(port),
        "--monitoring",
        str(tmp_path / "monitoring.jsonl"),
        "--monitor",
        "picsellia",
        "--monitor-option",
        f"deployment_id={standin.deployment_id}",
        "--monitor-option",
        f"dead_letter={tmp_path / 'dead.jsonl'}",
    ]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True)
    try:

        def healthy() -> bool:
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok
            except requests.RequestException:
                return False

        poll(healthy, timeout=180)
        answers = [post_image(f"http://127.0.0.1:{port}", scene(i), f"cli_{i}.png") for i in (0, 1)]
        poll(lambda: len(standin.stored) >= 2, timeout=60)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert sorted(b["filename"] for b in standin.stored) == ["cli_0.png", "cli_1.png"]
    assert standin.stored[0]["raw_predictions"]["detection_scores"]
    assert all(a["predictions"][0]["error"] is None for a in answers)


def test_serve_yaml_and_the_app_builder_take_the_monitor(monkeypatch):
    from ray.serve import Application

    from serve.app import app_builder

    monkeypatch.setenv("PICSELLIA_API_TOKEN", "pcs-token")
    args = {"model": "reference/color-boxes", "monitor": "picsellia"}
    app = app_builder({**args, "monitor_options": {"deployment_id": "d-1", "queue_size": 50}})
    assert isinstance(app, Application)
    with pytest.raises(ValueError, match="picsellia"):
        app_builder({**args, "monitor": "nosuch"})
    with pytest.raises(ValueError, match="without a monitor"):
        app_builder({"model": "reference/color-boxes", "monitor_options": {"deployment_id": "d"}})
    with pytest.raises(ValueError, match="colour"):
        app_builder({**args, "monitor_options": {"deployment_id": "d-1", "colour": "red"}})
