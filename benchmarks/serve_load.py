"""Online prediction under load: Tessera's Serve app on loopback, batching on and off.

A bounded load generator: ``--clients`` threads each send their share of ``--requests``
``POST /predict`` requests (one generated 320x240 PNG each, raw body) as fast as answers
come, against the app with dynamic batching on (``max_batch_size`` 8) and off (1).
Reported per setting: requests/s, p50 and p99 latency. The model's own time for one image
(the reference detector, called directly in this process, median of 200) is reported
apart, and the overhead is the p50 latency of a single client, one request at a time,
minus that.

The Picsellia monitoring sink (``monitor="picsellia"``) is measured against a monitoring
host where nothing listens (every send fails and is retried; the queue overflows into the
dead letter): the one-client p50 with the sink against the same app without it, in
alternating rounds (the app redeployed each round), the median of the rounds' p50s each.

Targets: p50 overhead at most 5 ms; on a CPU machine batching costs nothing (batched
throughput at 16 clients at least equal to unbatched); on a GPU, batched at least 2x; the
monitoring sink adds at most 1 ms to the p50. Results: benchmarks/results/serve.json.
Run: ``python benchmarks/serve_load.py``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import write_results  # noqa: E402

MODEL = "reference/color-boxes"


def scene_png() -> bytes:
    """A 320x240 scene of a few coloured rectangles, PNG-encoded."""
    from PIL import Image
    from scenes import draw_scene, random_boxes

    rng = np.random.default_rng(0)
    image = draw_scene(240, 320, random_boxes(rng, 240, 320, 6))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def model_time_ms(body: bytes) -> float:
    """Median time of the detector on one decoded image, called directly."""
    from engine.models.zoo import resolve_model
    from engine.sources.decode import decode_image_bytes

    adapter = resolve_model(MODEL)
    adapter.load("cpu")
    image = decode_image_bytes(body, "scene.png")
    times = []
    for _ in range(200):
        start = time.perf_counter()
        adapter.infer([image], adapter.default_conf)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def load(url: str, body: bytes, clients: int, requests_total: int) -> dict:
    """``clients`` threads share ``requests_total`` requests; latency of each, and rate."""
    import requests

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    per_client = requests_total // clients

    def client() -> None:
        nonlocal errors
        session = requests.Session()
        for _ in range(per_client):
            start = time.perf_counter()
            response = session.post(
                f"{url}/predict", data=body, headers={"Content-Type": "image/png"}, timeout=60
            )
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                errors += response.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 2),
        "requests_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--port", type=int, default=0, help="0: a free port, picked now")
    parser.add_argument("--monitor-rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.port:
        from serve_helpers import free_port

        args.port = free_port()

    import ray
    from ray import serve

    from serve.app import run

    body = scene_png()
    own_ms = model_time_ms(body)
    ray.init(include_dashboard=False, log_to_driver=False)
    url = f"http://127.0.0.1:{args.port}"
    results = {}
    try:
        for label, batch in (("batched", 8), ("unbatched", 1)):
            run(MODEL, port=args.port, max_batch_size=batch, batch_wait_timeout_s=0.005)
            load(url, body, 4, 80)  # warm-up
            single = load(url, body, 1, 100)
            loaded = load(url, body, args.clients, args.requests)
            results[label] = {"max_batch_size": batch, "one_client": single, "loaded": loaded}
            serve.delete("tessera")
        monitor = monitor_overhead(url, body, args.port, args.monitor_rounds, tmp_dead_letter())
    finally:
        serve.shutdown()
        ray.shutdown()

    batched, unbatched = results["batched"], results["unbatched"]
    overhead = batched["one_client"]["p50_ms"] - own_ms
    ratio = batched["loaded"]["requests_per_second"] / unbatched["loaded"]["requests_per_second"]
    write_results(
        "serve",
        {
            "model": MODEL,
            "image": "320x240 PNG, raw body",
            "model_ms_per_image": round(own_ms, 2),
            "runs": results,
            "p50_overhead_ms": round(overhead, 2),
            "target_p50_overhead_ms": 5.0,
            "target_overhead_met": overhead <= 5.0,
            "batched_over_unbatched_at_16_clients": round(ratio, 3),
            "target_ratio_cpu": 1.0,
            "target_ratio_met": ratio >= 1.0,
            "picsellia_monitor": monitor,
        },
    )


def tmp_dead_letter() -> str:
    """A dead-letter file of this run (the sink writes every overflowed record there)."""
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="tessera-bench-")) / "dead_letter.jsonl")


def monitor_overhead(url: str, body: bytes, port: int, rounds: int, dead_letter: str) -> dict:
    """One-client p50 with the Picsellia sink (dead monitoring host) and without, alternated."""
    import json

    from ray import serve
    from serve_helpers import free_port

    from engine.models.reference import COLORS
    from serve.app import run

    options = {
        "deployment_id": "bench",
        "api_token": "bench-token",
        "monitoring_host": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "label_ids": {name: i + 1 for i, name in enumerate(COLORS)},
        "dead_letter": dead_letter,
    }
    p50s: dict[str, list[float]] = {"without_sink": [], "with_sink": []}
    stats = None
    for _ in range(rounds):
        for label in ("without_sink", "with_sink"):
            sink = {"monitor": "picsellia", "monitor_options": options}
            if label == "without_sink":
                sink = {}
            run(MODEL, port=port, max_batch_size=8, batch_wait_timeout_s=0.005, **sink)
            load(url, body, 1, 40)  # warm-up (the sink starts on the first request)
            p50s[label].append(load(url, body, 1, 300)["p50_ms"])
            if sink:
                import requests

                stats = requests.get(f"{url}/info", timeout=30).json()["monitor"]
            serve.delete("tessera")
    without, with_sink = (statistics.median(p50s[k]) for k in ("without_sink", "with_sink"))
    lines = Path(dead_letter).read_text().splitlines() if Path(dead_letter).exists() else []
    return {
        "monitoring_host": "dead (connection refused)",
        "rounds": rounds,
        "p50_ms_rounds": p50s,
        "p50_ms_without_sink": round(without, 2),
        "p50_ms_with_sink": round(with_sink, 2),
        "difference_ms": round(with_sink - without, 2),
        "target_difference_ms": 1.0,
        "target_met": with_sink - without <= 1.0,
        "last_round_sink": stats,
        "dead_letter_lines": len(lines),
        "dead_letter_reasons": sorted({json.loads(x)["reason"].split(" (")[0] for x in lines}),
    }


if __name__ == "__main__":
    main()
