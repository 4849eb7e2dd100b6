"""The driver's cost: items/s and driver memory with a no-op model over many tiny items.

A no-op `ModelAdapter` (every image gets empty Detections) leaves only what Tessera itself
does per item: resolving the input, planning, decoding an 8x8 PNG, and receiving the
prediction rows. A tree of 8x8 PNG files (folders of 1,000) is written once to a temp
directory; each run then predicts 10,000 items (a list of ten folders) or 100,000 (the
tree's root, ``recursive=True``) in a fresh process with its own local Ray, so that its
memory figures are its own:

- ``predict`` (the whole result list), ``predict(stream=True)`` and ``predict_detached``
  iterated (nothing kept: the driver's memory must stay flat from 10,000 to 100,000);
- phases: resolving the input (`resolve_input` alone), the first prediction (detached),
  and the steady rows/s after it;
- the driver's RSS sampled every 20 ms: before, at its peak and at the end of the run;
- a cProfile of the driver (main thread and the session's producer thread) for the
  100,000-item ``predict``, top functions by cumulative time, saved beside the figures.

    python benchmarks/driver_cost.py [--sizes 10000 100000] [--batch-size 256]

Writes the key ``driver`` of benchmarks/results/cluster.json (other keys are kept).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from engine.detections import Detections  # noqa: E402
from engine.models.base import ModelAdapter  # noqa: E402

#: Files per folder of the tree.
PER_FOLDER = 1000
#: Seconds between two samples of the driver's RSS.
SAMPLE_S = 0.02
PROFILE_TOP = 40


class NoOpModel(ModelAdapter):
    """A model that finds nothing, at no cost: what remains is Tessera's own work.

    Example:
        >>> NoOpModel().infer([np.zeros((8, 8, 3), np.uint8)], 0.5)[0].xyxy.shape
        (0, 4)
    """

    name = "benchmark/no-op"
    task = "detection"
    classes = ["thing"]
    default_conf = 0.5
    input_size = (8, 8)

    def load(self, device: str) -> None:
        """Nothing to load."""

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Return empty Detections for every image."""
        return [Detections.empty() for _ in images]


def make_tree(root: Path, count: int) -> list[Path]:
    """Write ``count`` 8x8 PNG files into folders of `PER_FOLDER` under ``root``.

    Returns:
        The folders, in order.
    """
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    folders = []
    for start in range(0, count, PER_FOLDER):
        folder = root / f"d{start // PER_FOLDER:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, min(count, start + PER_FOLDER)):
            (folder / f"img_{i:06d}.png").write_bytes(data)
        folders.append(folder)
    return folders


class RssSampler:
    """Sample this process's RSS in a thread: the peak and the last value, in MiB."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.start_mib = self.now()
        self._cpu_start = self._cpu()
        self.peak_mib = self.start_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> float:
        """The RSS now, in MiB."""
        return self._process.memory_info().rss / 2**20

    def _cpu(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak_mib = max(self.peak_mib, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end_mib = self.now()
        self.cpu_s = self._cpu() - self._cpu_start
        self.peak_mib = max(self.peak_mib, self.end_mib)

    def figures(self) -> dict[str, float]:
        """Start, peak and end RSS, in MiB."""
        return {
            "rss_start_mib": round(self.start_mib, 1),
            "rss_peak_mib": round(self.peak_mib, 1),
            "rss_end_mib": round(self.end_mib, 1),
            "rss_growth_mib": round(self.peak_mib - self.start_mib, 1),
            "driver_cpu_s": round(self.cpu_s, 2),
        }


class ThreadProfiles:
    """cProfile the calling thread and every thread started while it is on."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _hook(self, *args: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()

    def __enter__(self) -> ThreadProfiles:
        threading.setprofile(self._hook)
        main = cProfile.Profile()
        self.profiles.append(main)
        main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiles[0].disable()
        threading.setprofile(None)

    def report(self, top: int) -> str:
        """The merged profile's top ``top`` functions by cumulative time, as text."""
        out = io.StringIO()
        stats = pstats.Stats(self.profiles[0], stream=out)
        for profile in self.profiles[1:]:
            try:
                profile.disable()
                stats.add(profile)
            except (TypeError, ValueError):
                continue  # a thread that recorded nothing
        stats.sort_stats("cumulative").print_stats(top)
        return out.getvalue()


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measured run in this (fresh) process; return its figures."""
    import ray

    import engine
    from engine.sources.resolve import resolve_input

    folders = [Path(p) for p in args.folders]
    size = args.size
    if size == len(folders) * PER_FOLDER and size > 10 * PER_FOLDER:
        value: Any = str(folders[0].parent)  # the tree's root, listed recursively
        recursive = True
    else:
        value, recursive = [str(f) for f in folders], False
    # a new local Ray of its own (never another process's cluster)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, num_cpus=2)
    model = engine.deploy(NoOpModel())
    options = {"batch_size": args.batch_size, "recursive": recursive}
    # warm (one folder): Ray Data's first execution in a process pays its own set-up
    model.predict(str(folders[0]), progress=False, batch_size=args.batch_size)
    figures: dict[str, Any] = {"items": size, "mode": args.mode, "batch_size": args.batch_size}
    profiles = ThreadProfiles() if args.profile else None
    with RssSampler() as rss:
        if profiles is not None:
            profiles.__enter__()
        started = time.perf_counter()
        if args.mode == "predict":
            predictions = model.predict(value, progress=False, **options)
            total_s = time.perf_counter() - started
            count, failed = len(predictions), len(predictions.failed)
            del predictions
        elif args.mode == "stream":  # read as it comes, nothing kept
            stream = model.predict(value, progress=False, stream=True, **options)
            count = failed = 0
            for prediction in stream:
                count += 1
                failed += prediction.error is not None
            total_s = time.perf_counter() - started
        else:
            count = failed = 0
            first_s = None
            with model.predict_detached(value, **options) as session:
                for prediction in session:
                    if first_s is None:
                        first_s = time.perf_counter() - started
                    count += 1
                    failed += prediction.error is not None
            total_s = time.perf_counter() - started
            figures["first_result_s"] = round(first_s or 0.0, 3)
            figures["steady_rows_per_s"] = round((count - 1) / (total_s - (first_s or 0.0)), 1)
        if profiles is not None:
            profiles.__exit__()
    assert count == size and failed == 0, (count, failed)
    figures["total_s"] = round(total_s, 3)
    figures["items_per_s"] = round(size / total_s, 1)
    figures["ms_per_item"] = round(1000 * total_s / size, 4)
    figures.update(rss.figures())
    # the driver's own work: its CPU seconds (every thread) per item, and the rate it bounds
    figures["driver_cpu_ms_per_item"] = round(1000 * rss.cpu_s / size, 4)
    figures["driver_bound_items_per_s"] = round(size / max(rss.cpu_s, 1e-9), 1)
    # the input phase alone, as predict does it first
    started = time.perf_counter()
    resolved = resolve_input(value, recursive=recursive)
    figures["resolve_s"] = round(time.perf_counter() - started, 3)
    assert len(resolved.items) == size
    del resolved
    if profiles is not None:
        Path(args.profile).write_text(profiles.report(PROFILE_TOP))
    model.close()
    ray.shutdown()
    return figures


def run_child(
    folders: list[Path], size: int, mode: str, batch_size: int, profile: Path | None = None
) -> dict[str, Any]:
    """Run `child` in a fresh Python process; return its figures."""
    command = [
        sys.executable,
        __file__,
        "--child",
        "--size",
        str(size),
        "--mode",
        mode,
        "--batch-size",
        str(batch_size),
        "--folders",
        *[str(f) for f in folders[: -(-size // PER_FOLDER)]],
    ]
    if profile is not None:
        command += ["--profile", str(profile)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"run {size} {mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_driver(figures: dict[str, Any]) -> Path:
    """Merge ``figures`` as key ``driver`` into results/cluster.json (other keys kept)."""
    path = RESULTS / "cluster.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current.pop("measured_at", None)
    current.pop("machine", None)
    current["driver"] = figures
    return write_results("cluster", current)


def main() -> None:
    """Write the tree, run each size and mode in its own process, write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--modes", nargs="+", default=["predict", "stream", "detached"])
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--folders", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    runs = []
    profile_path = RESULTS / "cluster_driver_profile.txt"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folders = make_tree(Path(tmp) / "tree", max(args.sizes))
        write_s = time.perf_counter() - started
        for size in args.sizes:
            for mode in args.modes:
                runs.append(run_child(folders, size, mode, args.batch_size))
                print(json.dumps(runs[-1]), flush=True)
        if not args.no_profile:
            profiled = run_child(folders, max(args.sizes), "predict", args.batch_size, profile_path)
            print(json.dumps(profiled), flush=True)
    by = {(r["items"], r["mode"]): r for r in runs}
    small, large = min(args.sizes), max(args.sizes)
    growth = {
        mode: round(by[(large, mode)]["rss_peak_mib"] - by[(small, mode)]["rss_peak_mib"], 1)
        for mode in args.modes
        if (small, mode) in by and (large, mode) in by
    }
    write_driver(
        {
            "model": "no-op (empty Detections)",
            "item": "8x8 PNG file",
            "batch_size": args.batch_size,
            "tree_write_s": round(write_s, 2),
            "goal_items_per_s": 1000,
            "runs": runs,
            "peak_rss_large_minus_small_mib": growth,
            "profile": None if args.no_profile else profile_path.name,
            "profiled_run_items_per_s": None if args.no_profile else profiled["items_per_s"],
        }
    )


if __name__ == "__main__":
    main()
