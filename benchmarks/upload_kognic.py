"""Upload throughput into a Kognic predictions group, through kognic-auth, under a rate limit.

The stand-in Kognic (tests/kognic_standin.py, real HTTP servers on loopback: a token
server and the API) enforces `SERVER_LIMIT_RPS` requests per sliding second (over it: 429
with Retry-After), answers each API request after `LATENCY_S`, and counts the open API
connections. It holds a dataset of `PREDICTIONS` scenes; the Kognic connector sends a
prediction of three boxes for each (``create`` mode: one POST per scene) with its defaults
for Kognic's limit of 10 connections (2 uploader actors holding 5 connections each, 10
requests in flight), the job's rate limiter set just under the server's limit.

Figures: the request rate during delivery as a share of the server's limit (target at
least 0.9), the most API connections open at once (at most 10), 429s received, and
predictions lost and duplicated (target 0 each). ``measure()`` returns them;
``python benchmarks/upload_kognic.py`` prints them as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SERVER_LIMIT_RPS = 50.0
LATENCY_S = 0.030
PREDICTIONS = 1000
CLASSES = ["car", "person"]


def make_predictions(count: int) -> list[Any]:
    """Three boxes per image ``img_<i>.png`` (its name is its scene's external id)."""
    from engine.detections import Detections
    from engine.prediction import Prediction

    xyxy = np.array([[1, 1, 10, 10], [12, 4, 30, 20], [5, 22, 25, 40]], np.float32)
    detections = Detections(xyxy, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]))
    return [
        Prediction(detections, CLASSES, name=f"img_{i}.png", height=48, width=64, index=i)
        for i in range(count)
    ]


def measure(
    predictions: int = PREDICTIONS,
    uploaders: int = 2,
    batch_size: int = 20,
    requests_per_second: float = 48.0,
    max_in_flight: int = 10,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (starts and stops a local Ray).

    Args:
        predictions: Scenes to upload a prediction for.
        uploaders: Uploader actors (each holds ``10 // uploaders`` connections).
        batch_size: Predictions per delivery.
        requests_per_second: Our limiter's rate (the server allows `SERVER_LIMIT_RPS`).
        max_in_flight: Requests running at once over all uploaders (at most 10).
    """
    import ray
    from kognic_standin import KognicStandin

    from connectors.kognic.uploader import KognicConnector, connections_per_uploader

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        with KognicStandin() as server, tempfile.TemporaryDirectory() as journals:
            dataset = server.add_dataset()
            scenes = {
                f"img_{i}.png": server.add_scene(dataset, f"img_{i}.png")
                for i in range(predictions)
            }
            server.rate_limit, server.latency_s = SERVER_LIMIT_RPS, LATENCY_S
            env = server.env()
            connector = KognicConnector(
                client_id=env["KOGNIC_CLIENT_ID"],
                client_secret=env["KOGNIC_CLIENT_SECRET"],
                host=env["KOGNIC_HOST"],
                auth_host=env["KOGNIC_AUTH_HOST"],
            )
            options = {
                "dataset_uuid": dataset,
                "num_uploaders": uploaders,
                "max_in_flight": max_in_flight,
                "requests_per_second": requests_per_second,
                "batch_size": batch_size,
                "journal_dir": journals,
            }
            connector.check_options("create", options)
            job = connector.start_upload("bench", "create", CLASSES, "detection", options, {})
            first = len(server.served)
            begun = time.perf_counter()
            job.submit(make_predictions(predictions))
            summary = job.finish()
            seconds = time.perf_counter() - begun
            served = server.served[first:]
            group = server.group_named(dataset, "tessera-bench")["uuid"]
            stored = Counter(row["sceneUuid"] for row in server.predictions_of(group))
            responses_429 = sum(1 for _, status, _ in server.records if status == 429)
            peak = server.max_open_connections
    finally:
        if started_here:
            ray.shutdown()
    span = served[-1] - served[0] if len(served) > 1 else 0.0
    achieved = (len(served) - 1) / span if span > 0 else 0.0
    return {
        "predictions": predictions,
        "server": {"limit_rps": SERVER_LIMIT_RPS, "latency_s": LATENCY_S},
        "client": {
            "uploaders": uploaders,
            "connections_per_uploader": connections_per_uploader(uploaders, max_in_flight),
            "limiter_rps": requests_per_second,
            "max_in_flight": max_in_flight,
            "predictions_per_delivery": batch_size,
        },
        "requests_during_delivery": len(served),
        "delivery_seconds": round(seconds, 2),
        "achieved_rps": round(achieved, 2),
        "share_of_limit": round(achieved / SERVER_LIMIT_RPS, 3),
        "target_share": 0.9,
        "target_met": achieved / SERVER_LIMIT_RPS >= 0.9,
        "max_open_connections": peak,
        "connection_limit": 10,
        "responses_429": responses_429,
        "lost": sum(1 for s in scenes.values() if stored.get(s, 0) == 0),
        "duplicated": sum(1 for s in scenes.values() if stored.get(s, 0) > 1),
        "delivered": summary["delivered"],
        "dead": summary["dead"],
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
