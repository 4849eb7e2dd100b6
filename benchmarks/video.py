"""Video throughput: Tessera's `predict` over a video against a plain one-process PyAV loop.

A generated 1280x720 H.264 video of 600 frames (coloured rectangles moving on known paths,
keyframe every 30 frames) is predicted with the same model on both sides:

- plain: one process decodes with PyAV (``frame.to_ndarray(format="rgb24")``) and runs
  the model frame after frame, in batches of ``--batch-size``;
- Tessera: ``model.predict(video)``: the video is split into keyframe-aligned segments
  that Ray tasks decode in parallel and hand to the deployed model worker.

The reference detector is numpy/scipy code that runs on one core, so Tessera deploys one
model worker per CPU (``--workers``), which is how one would deploy a single-threaded
model; the plain loop is one process by definition. Also decode-only frames/s of both:
the plain loop without the model, and Tessera's segments decoded by parallel Ray tasks
without the model. Warm runs alternate plain and
Tessera; medians are compared. The model is the reference detector (``--model`` takes
any zoo name or checkpoint).

Results: benchmarks/results/video.json. Run: ``python benchmarks/video.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import write_results  # noqa: E402

WIDTH, HEIGHT, FRAMES, FPS, GOP = 1280, 720, 600, 30, 30


def moving_squares(index: int, width: int, height: int) -> list:
    """Six 60 px squares crossing the frame at different speeds, on separate rows."""
    names = ("red", "green", "blue", "yellow", "cyan", "magenta")
    return [
        (name, (20 + (row + 1) * index) % (width - 80), 20 + row * 115,
         (20 + (row + 1) * index) % (width - 80) + 60, 80 + row * 115)
        for row, name in enumerate(names)
    ]  # fmt: skip


def plain_loop(path: Path, adapter, batch_size: int, conf: float, with_model: bool) -> int:
    """Decode every frame in this process and (optionally) predict in batches."""
    import av

    frames, batch = 0, []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            batch.append(frame.to_ndarray(format="rgb24"))
            if len(batch) == batch_size:
                if with_model:
                    adapter.infer(batch, conf)
                frames += len(batch)
                batch = []
    if batch:
        if with_model:
            adapter.infer(batch, conf)
        frames += len(batch)
    return frames


def tessera_decode_only(path: Path) -> int:
    """Decode the video's segments in parallel Ray tasks, without a model."""
    import ray

    from engine.sources.video import decode_segment, plan_segments, probe_video, select_frames

    info = probe_video(path)
    segments = plan_segments(info, select_frames(info))
    info_ref = ray.put(info)

    @ray.remote(num_cpus=0.5)
    def decode(segment, info) -> int:
        return sum(frame.image is not None for frame in decode_segment(segment, info))

    return sum(ray.get([decode.remote(segment, info_ref) for segment in segments]))


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reference/color-boxes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="Tessera model workers (default: one per CPU, as the detector is single-threaded)",
    )
    args = parser.parse_args()

    import ray
    from videos import write_video

    import engine
    from engine.models.zoo import resolve_model

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        started = time.perf_counter()
        write_video(path, FRAMES, (WIDTH, HEIGHT), FPS, gop=GOP, boxes_at=moving_squares)
        encode_s = time.perf_counter() - started

        adapter = resolve_model(args.model)
        adapter.load("cpu")
        conf = adapter.default_conf
        ray.init(include_dashboard=False, log_to_driver=False)
        model = engine.deploy(args.model, num_workers=args.workers)
        try:
            runs: dict[str, list[float]] = {k: [] for k in ("plain", "tessera")}
            decode: dict[str, list[float]] = {k: [] for k in ("plain", "tessera")}
            found = None
            for _ in range(1 + args.warm_runs):  # the first round is the warm-up
                seconds, frames = timed(plain_loop, path, adapter, args.batch_size, conf, True)
                assert frames == FRAMES
                runs["plain"].append(seconds)
                seconds, predictions = timed(
                    lambda: model.predict(path, batch_size=args.batch_size, progress=False)
                )
                assert len(predictions) == FRAMES and not predictions.failed
                found = sum(len(p) for p in predictions)
                runs["tessera"].append(seconds)
                seconds, frames = timed(plain_loop, path, adapter, args.batch_size, conf, False)
                decode["plain"].append(seconds)
                seconds, frames = timed(tessera_decode_only, path)
                assert frames == FRAMES
                decode["tessera"].append(seconds)
        finally:
            model.close()
            ray.shutdown()

    def fps(seconds: list[float]) -> float:
        return round(FRAMES / statistics.median(seconds[1:]), 1)

    figures = {
        "video": {
            "size": [WIDTH, HEIGHT],
            "frames": FRAMES,
            "fps": FPS,
            "codec": "h264 (libx264)",
            "keyframe_interval": GOP,
            "encode_seconds": round(encode_s, 1),
        },
        "model": args.model,
        "batch_size": args.batch_size,
        "cpus": threads,
        "tessera_model_workers": args.workers,
        "objects_found_by_tessera": found,
        "frames_per_second": {
            "plain": fps(runs["plain"]),
            "tessera": fps(runs["tessera"]),
            "plain_decode_only": fps(decode["plain"]),
            "tessera_decode_only": fps(decode["tessera"]),
        },
        "seconds": {
            "plain": [round(s, 2) for s in runs["plain"]],
            "tessera": [round(s, 2) for s in runs["tessera"]],
            "plain_decode_only": [round(s, 2) for s in decode["plain"]],
            "tessera_decode_only": [round(s, 2) for s in decode["tessera"]],
        },
        "notes": "first round of each is the warm-up; medians of the warm rounds",
    }
    ratio = figures["frames_per_second"]["tessera"] / figures["frames_per_second"]["plain"]
    figures["tessera_over_plain"] = round(ratio, 3)
    figures["target_tessera_over_plain"] = 1.0
    figures["target_met"] = ratio >= 1.0
    write_results("video", figures)


if __name__ == "__main__":
    main()
