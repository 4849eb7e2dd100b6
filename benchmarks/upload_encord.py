"""Upload throughput into an Encord prediction branch, through the official SDK, rate limited.

The stand-in server (tests/encord_standin.py, a real HTTP server on loopback, answering
the requests the ``encord`` SDK sends) enforces `SERVER_LIMIT_RPS` requests per sliding
second (over it: 429 with Retry-After) and answers each request after `LATENCY_S`. It
holds a project of `PREDICTIONS` images; an `UploadJob` sends a prediction of three boxes
for each with the Encord connector in ``create`` mode (a new branch): 4 uploader actors
sharing one rate limiter set just under the limit. Each batch costs three requests (list
the batch's branch rows, create them in one bundle, save them in one bundle), and each
uploader process loads the project once (two requests).

Figures: the request rate during delivery as a share of the server's limit (target at
least 0.9), 429s received, predictions lost and duplicated (target 0 each). ``measure()``
returns them; ``python benchmarks/upload_encord.py`` prints them as JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SERVER_LIMIT_RPS = 50.0
LATENCY_S = 0.030
PREDICTIONS = 1000
CLASSES = ["car", "person"]
BRANCH = "bench"


def make_predictions(titles: list[str]) -> list[Any]:
    """Three boxes per image (its name is its data unit's title)."""
    from engine.detections import Detections
    from engine.prediction import Prediction

    xyxy = np.array([[1, 1, 10, 10], [12, 4, 30, 20], [5, 22, 25, 40]], np.float32)
    detections = Detections(xyxy, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]))
    return [
        Prediction(detections, CLASSES, name=title, height=48, width=64, index=i)
        for i, title in enumerate(titles)
    ]


def measure(
    predictions: int = PREDICTIONS,
    uploaders: int = 4,
    batch_size: int = 10,
    requests_per_second: float = 48.0,
    max_in_flight: int = 4,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (starts and stops a local Ray).

    Args:
        predictions: Images to upload a prediction for.
        uploaders: Uploader actors.
        batch_size: Images per delivery (rows per bundle request).
        requests_per_second: The job's limiter (the server allows `SERVER_LIMIT_RPS`).
        max_in_flight: Requests running at once over all uploaders.

    Returns:
        The figures (see the module docstring).
    """
    import ray
    from encord_standin import EncordStandin

    from connectors.base import UploadPlan
    from connectors.encord import EncordClient, EncordUploader
    from connectors.runtime import UploadJob

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        with EncordStandin() as server, tempfile.TemporaryDirectory() as journals:
            project = server.add_project("bench", [(c, "bounding_box") for c in CLASSES])
            titles = [f"img_{i}.png" for i in range(predictions)]
            hashes = [server.add_image(project, t, 64, 48) for t in titles]
            server.rate_per_s = SERVER_LIMIT_RPS
            server.latency_s = LATENCY_S
            client = EncordClient(ssh_key=server.private_key, domain=server.url, timeout=10)
            plan = UploadPlan(
                job_id="bench",
                mode="create",
                class_names=CLASSES,
                options={"project_hash": project, "branch_name": BRANCH},
            )
            items = make_predictions(titles)
            begun = time.perf_counter()
            job = UploadJob.start(
                EncordUploader(client=client),
                plan,
                num_uploaders=uploaders,
                requests_per_second=requests_per_second,
                max_in_flight=max_in_flight,
                batch_size=batch_size,
                root=journals,
            )
            prepared = time.perf_counter()
            first = len(server.log)
            job.submit(items)
            summary = job.finish()
            finished = time.perf_counter()
            log = server.log[first:]
            stored = {h: len(server.objects_of(h, BRANCH)) for h in hashes}
    finally:
        if started_ray:
            ray.shutdown()
    answered = [t for t, _, status in log if status != 429]
    span = answered[-1] - answered[0] if len(answered) > 1 else 0.0
    achieved = (len(answered) - 1) / span if span > 0 else 0.0
    return {
        "predictions": predictions,
        "server": {"limit_rps": SERVER_LIMIT_RPS, "latency_s": LATENCY_S},
        "client": {
            "uploaders": uploaders,
            "limiter_rps": requests_per_second,
            "max_in_flight": max_in_flight,
            "rows_per_bundle_request": batch_size,
        },
        "requests_during_delivery": len(log),
        "requests_by_route": {
            r: sum(1 for _, x, _ in log if x == r) for r in sorted({x for _, x, _ in log})
        },
        "delivery_seconds": round(finished - prepared, 2),
        "prepare_seconds": round(prepared - begun, 2),
        "achieved_rps": round(achieved, 2),
        "share_of_limit": round(achieved / SERVER_LIMIT_RPS, 3),
        "target_share": 0.9,
        "target_met": achieved / SERVER_LIMIT_RPS >= 0.9,
        "responses_429": sum(1 for _, _, status in log if status == 429),
        "lost": sum(1 for count in stored.values() if count == 0),
        "duplicated": sum(1 for count in stored.values() if count > 3),
        "delivered": summary["delivered"],
        "dead": summary["dead"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
