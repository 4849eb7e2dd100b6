"""Detached sessions: time to the first prediction, and the driver's memory under a slow reader.

1) A 1,000-image job through `predict_detached`: seconds until the first prediction
   arrives against seconds until the last one (and `predict`'s blocking time, for scale).
2) The driver's peak RSS while a slow consumer (a pause after every prediction) reads
   1,000 and then 5,000 images: with a bounded buffer it must not grow with the job.

Images are generated 96x128 PNG files with known rectangles; the model is the reference
detector, so the figures measure the session machinery, not a network.

    python benchmarks/sessions.py

Writes benchmarks/results/sessions.json.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import write_results  # noqa: E402
from scenes import draw_scene, random_boxes  # noqa: E402

SLOW_READER_PAUSE_S = 0.002


def make_images(folder: Path, count: int) -> list[str]:
    """Write ``count`` small PNG scenes and return their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.png"
        Image.fromarray(draw_scene(96, 128, random_boxes(rng, 96, 128, 3, max_side=20))).save(path)
        paths.append(str(path))
    return paths


class PeakRSS:
    """Sample this process's resident memory every 20 ms and keep the peak."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def first_and_total(model, paths: list[str]) -> dict:
    """Time the first and the last prediction of a detached session over ``paths``."""
    started = time.perf_counter()
    with model.predict_detached(paths, batch_size=8) as session:
        session.next(timeout=600)
        first_s = time.perf_counter() - started
        count = 1 + sum(1 for _ in session)
        total_s = time.perf_counter() - started
    assert count == len(paths), (count, len(paths))
    return {"first_prediction_s": round(first_s, 2), "whole_job_s": round(total_s, 2)}


def slow_reader_rss(model, paths: list[str]) -> dict:
    """Read a session slowly; report the driver's RSS before and at its peak."""
    with PeakRSS() as rss:
        with model.predict_detached(paths, batch_size=8, max_buffered_blocks=4) as session:
            count = 0
            for prediction in session:
                count += 1
                assert prediction.error is None
                time.sleep(SLOW_READER_PAUSE_S)
    assert count == len(paths)
    mib = 1024 * 1024
    return {
        "images": len(paths),
        "rss_before_mib": round(rss.start / mib, 1),
        "rss_peak_mib": round(rss.peak / mib, 1),
        "rss_growth_mib": round((rss.peak - rss.start) / mib, 1),
    }


def main() -> None:
    """Run both measurements and write the figures."""
    import ray

    import engine

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), 5000)
        ray.init(include_dashboard=False, log_to_driver=False)
        model = engine.deploy("reference/color-boxes")
        model.predict(paths[:16], progress=False)  # warm the decode processes
        started = time.perf_counter()
        model.predict(paths[:1000], progress=False)
        blocking_s = time.perf_counter() - started
        timing = first_and_total(model, paths[:1000])
        memory = [slow_reader_rss(model, paths[:1000]), slow_reader_rss(model, paths)]
        model.close()
        ray.shutdown()
    growth_1k, growth_5k = memory[0]["rss_growth_mib"], memory[1]["rss_growth_mib"]
    write_results(
        "sessions",
        {
            "model": "reference/color-boxes (96x128 PNG files)",
            "job_1000": {**timing, "blocking_predict_s": round(blocking_s, 2)},
            "first_over_whole": round(timing["first_prediction_s"] / timing["whole_job_s"], 3),
            "slow_reader_pause_s": SLOW_READER_PAUSE_S,
            "slow_reader": memory,
            "rss_growth_5000_minus_1000_mib": round(growth_5k - growth_1k, 1),
        },
    )


if __name__ == "__main__":
    main()
