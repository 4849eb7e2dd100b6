"""Driver memory of `engine.evaluate` at 5,000 and 50,000 small images.

Each size is written once to a temp folder: a COCO ground-truth file (64x48 images, 1-4
boxes each, 3 classes) and a ``predictions.jsonl`` export of noisy predictions (boxes
shifted, some missed, some extra). Each size is then evaluated in a fresh process, which
reports its RSS before anything is read, after the ground truth alone is indexed, and at
its peak during `engine.evaluate` (``ru_maxrss``), and the seconds it took. Predictions
are streamed from the file one image at a time and evaluated in chunks of 1,000 images, so
the peak above the ground truth's own index is what COCOeval keeps of each image's matches
(its per-image ``evalImgs``, needed by ``accumulate``), not the predictions.

    python benchmarks/evaluate_memory.py [--sizes 5000 50000]

Writes benchmarks/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

CLASSES = ["car", "person", "dog"]


def write_set(folder: Path, images: int) -> tuple[Path, Path]:
    """A COCO ground truth and a jsonl export of predictions for ``images`` images."""
    from connectors.formats.jsonl import prediction_to_jsonl
    from engine.detections import Detections
    from engine.prediction import Prediction

    rng = np.random.default_rng(images)
    gt = {"images": [], "annotations": [], "categories": []}
    gt["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    with (folder / "predictions.jsonl").open("w") as lines:
        for i in range(images):
            name = f"img_{i:06d}.png"
            gt["images"].append({"id": i + 1, "file_name": name, "height": 48, "width": 64})
            n = int(rng.integers(1, 5))
            xy = rng.uniform(0, 40, (n, 2)).round()
            boxes = np.concatenate([xy, xy + rng.integers(8, 24, (n, 2))], 1)
            classes = rng.integers(0, 3, n)
            for box, c in zip(boxes, classes):
                x1, y1, x2, y2 = (float(v) for v in box)
                gt["annotations"].append(
                    {"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                     "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                )  # fmt: skip
            keep = rng.random(n) > 0.2
            found = boxes[keep] + rng.normal(0, 1.5, (int(keep.sum()), 4))
            extra = np.concatenate([xy[:1], xy[:1] + 10], 1) if rng.random() < 0.3 else []
            found = np.concatenate([found, np.asarray(extra).reshape(-1, 4)]).astype(np.float32)
            found[:, 2:] = np.maximum(found[:, 2:], found[:, :2] + 2)
            labels = np.concatenate([classes[keep], rng.integers(0, 3, len(found) - keep.sum())])
            scores = rng.uniform(0.05, 1.0, len(found))
            prediction = Prediction(
                Detections(found, scores, labels), CLASSES, name=name, height=48, width=64
            )
            lines.write(prediction_to_jsonl(prediction) + "\n")
    (folder / "gt.json").write_text(json.dumps(gt))
    return folder / "predictions.jsonl", folder / "gt.json"


def child(predictions: str, ground_truth: str) -> None:
    """Evaluate in this fresh process; print its figures as one JSON line."""
    process = psutil.Process()
    start = process.memory_info().rss
    import engine
    from engine.evaluation import load_ground_truth
    from engine.evaluation.metrics import coco_index

    imported = process.memory_info().rss
    truth = load_ground_truth(ground_truth)
    coco_index(truth.dataset)
    with_truth = process.memory_info().rss
    started = time.perf_counter()
    report = engine.evaluate(predictions, truth)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mib = 1024 * 1024
    print(
        json.dumps(
            {
                "rss_start_mib": round(start / mib, 1),
                "rss_imported_mib": round(imported / mib, 1),
                "rss_with_ground_truth_mib": round(with_truth / mib, 1),
                "rss_peak_mib": round(peak / mib, 1),
                "peak_above_ground_truth_mib": round((peak - with_truth) / mib, 1),
                "evaluate_s": round(seconds, 2),
                "images_per_s": round(report.images / seconds, 1),
                "map": round(report.map, 4),
                "map50": round(report.map50, 4),
            }
        )
    )


def main() -> None:
    """Write each size, evaluate it in a fresh process, and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            started = time.perf_counter()
            predictions, truth = write_set(folder, size)
            written = time.perf_counter() - started
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(predictions), str(truth)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            figures.update(
                images=size,
                predictions_file_mib=round(predictions.stat().st_size / 2**20, 1),
                ground_truth_file_mib=round(truth.stat().st_size / 2**20, 1),
                write_s=round(written, 1),
            )
            runs.append(figures)
            print(json.dumps(figures), flush=True)
    small, large = runs[0], runs[-1]
    write_results(
        "evaluate",
        {
            "runs": runs,
            "peak_ratio_large_over_small": round(large["rss_peak_mib"] / small["rss_peak_mib"], 2),
            "chunk_size": 1000,
            "notes": [
                "Predictions stream from predictions.jsonl one image at a time; the ground "
                "truth (a COCO index) is held whole, and COCOeval's compact per-image "
                "matches are kept for accumulate().",
            ],
        },
    )


if __name__ == "__main__":
    main()
