"""Batch throughput: Tessera's `predict` against a plain one-process loop.

256 generated 640x480 JPEG files, ssdlite320_mobilenet_v3_large with random weights (fixed
seed, saved as a Tessera checkpoint so both sides run the very same weights). Each side runs
once cold, then ``--warm-runs`` times warm, alternating plain and Tessera so that a noisy
neighbour or clock drift hits both alike; the medians of the warm runs are compared.
Tessera's cold start (Ray start, deploy, first predict) is reported apart, as is the plain
loop's model load.

    python benchmarks/throughput.py [--images 256] [--device cpu]

Writes benchmarks/results/throughput.json (throughput_gpu.json for another device).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ARCH = "ssdlite320_mobilenet_v3_large"


def make_images(folder: Path, count: int) -> list[Path]:
    """Write ``count`` 640x480 JPEGs with random shapes on noise."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image = rng.integers(0, 60, (480, 640, 3), dtype=np.uint8)
        for _ in range(6):
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            image[y : y + 80, x : x + 80] = rng.integers(0, 256, 3)
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


class PlainLoop:
    """Decode, convert, infer and postprocess one image after another in this process.

    The network's own score threshold is set to ``conf``, as Tessera's adapter does, so the
    two sides do the same model work and the ratio measures the pipeline.
    """

    def __init__(self, checkpoint: Path, threads: int, device: str, conf: float) -> None:
        import torch
        import torchvision

        torch.set_num_threads(threads)
        started = time.perf_counter()
        model = getattr(torchvision.models.detection, ARCH)(weights=None, weights_backbone=None)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)
        self.model = model.eval().to(device)
        self.model.score_thresh = conf
        self.device, self.conf = device, conf
        self.load_s = time.perf_counter() - started

    def run(self, paths: list[Path]) -> dict:
        """Predict every path; return the seconds taken and the objects found."""
        import torch

        started = time.perf_counter()
        found = 0
        with torch.inference_mode():
            for path in paths:
                image = np.array(Image.open(path).convert("RGB"))
                tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
                out = self.model([tensor.to(self.device)])[0]
                found += int((out["scores"] >= self.conf).sum())
        return {"seconds": time.perf_counter() - started, "objects": found}


def tessera_run(model, paths: list[Path], conf: float, batch_size: int) -> dict:
    """One `predict` over every path; return the seconds taken and the objects found."""
    started = time.perf_counter()
    predictions = model.predict(
        [str(p) for p in paths], conf=conf, batch_size=batch_size, progress=False
    )
    seconds = time.perf_counter() - started
    assert not predictions.failed, predictions.failed[:1]
    return {"seconds": seconds, "objects": sum(len(p) for p in predictions)}


def main() -> None:
    """Run both sides and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--conf", type=float, default=0.5)
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args()

    import os

    import ray
    import torch

    import engine

    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_images(folder, args.images)
        torch.manual_seed(0)
        import torchvision

        network = getattr(torchvision.models.detection, ARCH)(weights=None, weights_backbone=None)
        classes = torchvision.models.detection.SSDLite320_MobileNet_V3_Large_Weights.DEFAULT.meta[
            "categories"
        ]
        checkpoint = engine.save_checkpoint(
            folder / "ssdlite.pt", f"torchvision/{ARCH}", classes, network
        )
        # cold: the plain loop's model load; Tessera's Ray start and deploy
        plain = PlainLoop(checkpoint, threads, args.device, args.conf)
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - started
        started = time.perf_counter()
        model = engine.deploy(checkpoint, device=args.device)
        tessera_load_s = time.perf_counter() - started
        # first (cold) runs, then warm runs alternating so that drift hits both sides alike
        runs: dict[str, list[dict]] = {"plain": [plain.run(paths)], "tessera": []}
        runs["tessera"].append(tessera_run(model, paths, args.conf, args.batch_size))
        for _ in range(args.warm_runs):
            runs["plain"].append(plain.run(paths))
            runs["tessera"].append(tessera_run(model, paths, args.conf, args.batch_size))
        model.close()
        ray.shutdown()
    plain_s = statistics.median(r["seconds"] for r in runs["plain"][1:])
    tessera_s = statistics.median(r["seconds"] for r in runs["tessera"][1:])
    plain_ips, tessera_ips = args.images / plain_s, args.images / tessera_s
    write_results(
        "throughput" if args.device == "cpu" else "throughput_gpu",
        {
            "images": args.images,
            "image_size": [480, 640],
            "model": f"torchvision/{ARCH} (random weights, seed 0)",
            "device": args.device,
            "torch_threads": threads,
            "batch_size": args.batch_size,
            "warm_runs": args.warm_runs,
            "plain_images_per_s": round(plain_ips, 2),
            "tessera_images_per_s": round(tessera_ips, 2),
            "ratio": round(tessera_ips / plain_ips, 3),
            "target_ratio": 1.0,
            "cold_start_s": {
                "ray_start": round(ray_start_s, 2),
                "tessera_deploy": round(tessera_load_s, 2),
                "tessera_first_predict": round(runs["tessera"][0]["seconds"], 2),
                "plain_model_load": round(plain.load_s, 2),
            },
            "runs": runs,
            "same_objects": runs["plain"][-1]["objects"] == runs["tessera"][-1]["objects"],
        },
    )


if __name__ == "__main__":
    main()
