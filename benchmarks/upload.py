"""Upload throughput to each platform's stand-in under its rate limit.

Supervisely: 2,000 predictions (below). Labelbox, Encord and Kognic:
`upload_labelbox.measure`, `upload_encord.measure` and `upload_kognic.measure` (the official
clients against their stand-ins; Kognic at most 10 connections), written under the
``labelbox``, ``encord`` and ``kognic`` keys of the same results file.

The stand-in server (tests/sly_standin.py, a real HTTP server on loopback) enforces 50
requests per second (a request over the limit gets 429 with Retry-After) and answers
each request after 30 ms. A project of 2,000 images is seeded, 2,000 predictions with
three boxes each are made for them, and an `UploadJob` sends them with the Supervisely
connector in ``append`` mode: 4 uploader actors sharing one rate limiter.

Figures: the achieved request rate during delivery as a share of the server's limit
(target at least 0.9), 429s received, predictions lost (target 0) and duplicated
(target 0). Results: benchmarks/results/upload.json. Run: ``python benchmarks/upload.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import write_results  # noqa: E402

SERVER_LIMIT_RPS = 50.0
LATENCY_S = 0.030
CLASSES = ["car", "person"]


def make_predictions(image_ids: dict[int, str]) -> list:
    """Three boxes per image, alternating classes, with the image's id in ``url``."""
    from connectors.supervisely import image_url
    from engine.detections import Detections
    from engine.prediction import Prediction

    predictions = []
    for index, (image_id, dataset) in enumerate(image_ids.items()):
        xyxy = np.array([[1, 1, 10, 10], [12, 4, 30, 20], [5, 22, 25, 40]], np.float32)
        detections = Detections(xyxy, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0]))
        predictions.append(
            Prediction(
                detections,
                CLASSES,
                source="supervisely",
                name=f"{image_id}.png",
                url=image_url(image_id),
                dataset=dataset,
                height=48,
                width=64,
                index=index,
            )
        )
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=2000)
    parser.add_argument("--uploaders", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=10, help="images per bulk request")
    parser.add_argument(
        "--rps", type=float, default=48.0, help="our limiter's rate (the server allows 50)"
    )
    parser.add_argument("--max-in-flight", type=int, default=4)
    args = parser.parse_args()

    import tempfile

    import ray
    from sly_standin import SuperviselyStandin

    from connectors.base import UploadPlan
    from connectors.runtime import UploadJob
    from connectors.supervisely import SuperviselyClient, SuperviselyConnector

    ray.init(include_dashboard=False, log_to_driver=False)
    with SuperviselyStandin() as server, tempfile.TemporaryDirectory() as journals:
        per_dataset = args.predictions // 4
        seeded = server.seed_project({f"ds{i}": per_dataset for i in range(4)})
        server.rate_limit = SERVER_LIMIT_RPS
        server.latency = LATENCY_S
        client = SuperviselyClient(server_address=server.url, token=server.token, timeout=10)
        connector = SuperviselyConnector(client=client)
        plan = UploadPlan(
            job_id="bench",
            mode="append",
            class_names=CLASSES,
            sources={"project_id": seeded["project_id"]},
        )
        predictions = make_predictions(seeded["images"])
        started = time.perf_counter()
        job = UploadJob.start(
            connector,
            plan,
            num_uploaders=args.uploaders,
            requests_per_second=args.rps,
            max_in_flight=args.max_in_flight,
            batch_size=args.batch_size,
            root=journals,
        )
        prepared = time.perf_counter()
        first_request = len(server.records)
        job.submit(predictions)
        summary = job.finish()
        finished = time.perf_counter()
        records = server.records[first_request:]
        stored = {
            iid: len(server.annotations.get(iid, {}).get("objects", [])) for iid in seeded["images"]
        }
    ray.shutdown()
    import upload_encord
    import upload_kognic
    import upload_labelbox

    others = {
        "labelbox": upload_labelbox.measure(),
        "encord": upload_encord.measure(),
        "kognic": upload_kognic.measure(),
    }

    span = records[-1].time - records[0].time if len(records) > 1 else 0.0
    achieved = (len(records) - 1) / span if span > 0 else 0.0
    lost = sum(1 for count in stored.values() if count == 0)
    duplicated = sum(1 for count in stored.values() if count > 3)
    write_results(
        "upload",
        {
            "predictions": len(predictions),
            "server": {"limit_rps": SERVER_LIMIT_RPS, "latency_s": LATENCY_S},
            "client": {
                "uploaders": args.uploaders,
                "limiter_rps": args.rps,
                "max_in_flight": args.max_in_flight,
                "images_per_bulk_request": args.batch_size,
            },
            "requests_during_delivery": len(records),
            "requests_by_method": {
                method: sum(1 for r in records if r.method == method)
                for method in sorted({r.method for r in records})
            },
            "delivery_seconds": round(finished - prepared, 2),
            "prepare_seconds": round(prepared - started, 2),
            "achieved_rps": round(achieved, 2),
            "share_of_limit": round(achieved / SERVER_LIMIT_RPS, 3),
            "target_share": 0.9,
            "target_met": achieved / SERVER_LIMIT_RPS >= 0.9,
            "responses_429": sum(1 for r in records if r.status == 429),
            "lost": lost,
            "duplicated": duplicated,
            "delivered": summary["delivered"],
            "dead": summary["dead"],
            **others,
        },
    )


if __name__ == "__main__":
    main()
