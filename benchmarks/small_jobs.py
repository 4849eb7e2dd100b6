"""Small jobs: where the fixed cost of one CLI call goes, and many tiny images.

1. ``tessera predict one.png --model reference/color-boxes`` as a user runs it (a fresh
   process each time, median of ``--cli-runs``): the first call, which starts Tessera's
   local Ray; later calls, which join it; and calls with ``--address local`` (a private
   Ray per call, as every call was before the local Ray), against the same work in a
   plain process: import, decode, detect. The phases come from a run of the same steps
   in-process with the local Ray up: imports, joining Ray, deploy, the first predict.
2. ``--tiny`` (2,000) 32x32 PNGs through a warm deployed model's ``predict``, against a
   plain loop that decodes each file and runs the same detector in batches.

    python benchmarks/small_jobs.py [--tiny 2000] [--cli-runs 3]

Writes benchmarks/results/small_jobs.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

MODEL = "reference/color-boxes"
PLAIN_ONE = (
    "import time; started = time.perf_counter()\n"
    "import numpy as np; from PIL import Image\n"
    "from engine.models.reference import ColorBoxDetector\n"
    "model = ColorBoxDetector(); model.load('cpu')\n"
    "image = np.asarray(Image.open({path!r}).convert('RGB'))\n"
    "print(len(model.infer([image], 0.5)[0]), time.perf_counter() - started)\n"
)
PHASES = (
    "import time; t0 = time.perf_counter()\n"
    "import engine, numpy as np\n"
    "t1 = time.perf_counter()\n"
    "from engine.runtime import ensure_ray; ensure_ray()\n"
    "t2 = time.perf_counter()\n"
    "model = engine.deploy({model!r})\n"
    "t3 = time.perf_counter()\n"
    "model.predict({path!r}, progress=False)\n"
    "t4 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1, t3 - t2, t4 - t3)\n"
)


def scene(rng: np.random.Generator, size: int) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    x, y = rng.integers(0, size // 2, 2)
    image[y : y + size // 3, x : x + size // 3] = (255, 0, 0)
    return image


def timed_process(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True, env=env)
    return time.perf_counter() - started, done.stdout


def cli_figures(folder: Path, runs: int) -> dict:
    """One CLI call on one image: cold, warm (Tessera's local Ray already up), private Ray."""
    from engine import local_ray

    path = folder / "one.png"
    Image.fromarray(scene(np.random.default_rng(0), 256)).save(path)
    tessera = str(Path(sys.executable).parent / "tessera")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[local_ray.DIR_VARIABLE] = str(folder / "local-ray")  # a local Ray of its own

    def cli(run: str, *extra: str) -> float:
        command = [tessera, "predict", str(path), "--model", MODEL, "--out",
                   str(folder / run), "--no-progress", *extra]  # fmt: skip
        return timed_process(command, env)[0]

    try:
        cold = cli("cold")  # starts Tessera's local Ray, which outlives the call
        warm = [cli(f"warm{run}") for run in range(runs)]  # each joins it
        private = [cli(f"private{run}", "--address", "local") for run in range(runs)]
        plain = [
            timed_process([sys.executable, "-c", PLAIN_ONE.format(path=str(path))])[0]
            for _ in range(runs)
        ]
        phases = PHASES.format(model=MODEL, path=str(path))
        _, printed = timed_process([sys.executable, "-c", phases], env)
    finally:
        local_ray.stop_local_ray(folder / "local-ray")
    imports, ray_join, deploy, first = (round(float(v), 2) for v in printed.split())
    return {
        "cli_one_image_cold_s": round(cold, 2),
        "cli_one_image_s": round(statistics.median(warm), 2),
        "cli_one_image_private_ray_s": round(statistics.median(private), 2),
        "plain_process_one_image_s": round(statistics.median(plain), 2),
        "cli_runs_s": [round(v, 2) for v in warm],
        "cli_private_ray_runs_s": [round(v, 2) for v in private],
        "phases_s (local Ray up)": {
            "imports": imports,
            "ray_join": ray_join,
            "deploy": deploy,
            "first_predict": first,
        },
    }


def tiny_figures(folder: Path, count: int) -> dict:
    import engine
    from engine.models.reference import ColorBoxDetector

    rng = np.random.default_rng(1)
    tiny = folder / "tiny"
    tiny.mkdir()
    for i in range(count):
        Image.fromarray(scene(rng, 32)).save(tiny / f"{i:05d}.png")
    detector = ColorBoxDetector()
    detector.load("cpu")
    started = time.perf_counter()
    files = sorted(tiny.iterdir())
    plain_objects = 0
    for start in range(0, len(files), 8):
        images = [np.asarray(Image.open(p).convert("RGB")) for p in files[start : start + 8]]
        plain_objects += sum(len(d) for d in detector.infer(images, 0.5))
    plain = time.perf_counter() - started
    with engine.deploy(MODEL) as model:
        model.predict(files[:16], progress=False)  # warm: workers up, code imported
        started = time.perf_counter()
        predictions = model.predict(tiny, progress=False)
        tessera = time.perf_counter() - started
    return {
        "tiny_images": count,
        "plain_loop_s": round(plain, 2),
        "tessera_warm_predict_s": round(tessera, 2),
        "tessera_per_image_ms": round(1000 * tessera / count, 2),
        "same_objects": sum(len(p) for p in predictions) == plain_objects,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=int, default=2000)
    parser.add_argument("--cli-runs", type=int, default=3)
    args = parser.parse_args()
    from engine import local_ray

    with tempfile.TemporaryDirectory(prefix="tessera-small-") as folder:
        figures = {"model": MODEL, **cli_figures(Path(folder), args.cli_runs)}
        os.environ[local_ray.DIR_VARIABLE] = str(Path(folder) / "tiny-ray")  # not the user's
        try:
            figures.update(tiny_figures(Path(folder), args.tiny))
        finally:
            local_ray.stop_local_ray(Path(folder) / "tiny-ray")
    path = write_results("small_jobs", figures)
    print(path.read_text())


if __name__ == "__main__":
    main()
