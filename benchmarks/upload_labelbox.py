"""Upload throughput into a Labelbox model run, through the official SDK, under a rate limit.

The stand-in GraphQL server (tests/labelbox_standin.py, a real HTTP server on loopback)
enforces `SERVER_LIMIT_RPS` requests per sliding second (over it: 429 with Retry-After)
and answers each request after `LATENCY_S`. It holds `PREDICTIONS` data rows and a model
run; an `UploadJob` sends a prediction of three boxes for each with the Labelbox connector
in ``append`` mode: 4 uploader actors sharing one rate limiter set just under the limit.
Each batch costs five requests (data row upsert and its status, the import lookup, the
import, its status file).

Figures: the request rate during delivery as a share of the server's limit (target at
least 0.9), 429s received, predictions lost and duplicated (target 0 each). ``measure()``
returns them; ``python benchmarks/upload_labelbox.py`` prints them as JSON.
"""

from __future__ import annotations

import json
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
    """Three boxes per image ``img_<i>.png`` (its name is its data row's global key)."""
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
    uploaders: int = 4,
    batch_size: int = 10,
    requests_per_second: float = 48.0,
    max_in_flight: int = 4,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (starts and stops a local Ray).

    Args:
        predictions: Data rows to upload a prediction for.
        uploaders: Uploader actors.
        batch_size: Predictions per delivery (one import job each).
        requests_per_second: Our limiter's rate (the server allows `SERVER_LIMIT_RPS`).
        max_in_flight: Requests running at once over all uploaders.
    """
    import ray
    from labelbox_standin import LabelboxStandin

    from connectors.base import UploadPlan
    from connectors.labelbox.uploader import LabelboxConnector
    from connectors.runtime import UploadJob

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        with LabelboxStandin() as server, tempfile.TemporaryDirectory() as journals:
            for i in range(predictions):
                server.add_data_row(f"img_{i}.png")
            run_id = server.add_model_run(CLASSES)
            server.rate_limit, server.latency_s = SERVER_LIMIT_RPS, LATENCY_S
            connector = LabelboxConnector(api_key=server.api_key, endpoint=server.endpoint)
            options = {"model_run_id": run_id, "poll_seconds": 0.05}
            plan = UploadPlan("bench", "append", CLASSES, options=options)
            job = UploadJob.start(
                connector,
                plan,
                num_uploaders=uploaders,
                requests_per_second=requests_per_second,
                max_in_flight=max_in_flight,
                batch_size=batch_size,
                root=journals,
            )
            first = len(server.served)
            begun = time.perf_counter()
            job.submit(make_predictions(predictions))
            summary = job.finish()
            seconds = time.perf_counter() - begun
            served = server.served[first:]
            stored = Counter(line["dataRow"]["globalKey"] for line in server.lines_of(run_id))
            responses_429 = sum(1 for _, status, _ in server.records if status == 429)
    finally:
        if started_here:
            ray.shutdown()
    span = served[-1] - served[0] if len(served) > 1 else 0.0
    achieved = (len(served) - 1) / span if span > 0 else 0.0
    keys = [f"img_{i}.png" for i in range(predictions)]
    return {
        "predictions": predictions,
        "server": {"limit_rps": SERVER_LIMIT_RPS, "latency_s": LATENCY_S},
        "client": {
            "uploaders": uploaders,
            "limiter_rps": requests_per_second,
            "max_in_flight": max_in_flight,
            "predictions_per_import": batch_size,
        },
        "requests_during_delivery": len(served),
        "delivery_seconds": round(seconds, 2),
        "achieved_rps": round(achieved, 2),
        "share_of_limit": round(achieved / SERVER_LIMIT_RPS, 3),
        "target_share": 0.9,
        "target_met": achieved / SERVER_LIMIT_RPS >= 0.9,
        "responses_429": responses_429,
        "lost": sum(1 for k in keys if stored.get(k, 0) == 0),
        "duplicated": sum(1 for k in keys if stored.get(k, 0) > 3),
        "delivered": summary["delivered"],
        "dead": summary["dead"],
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
