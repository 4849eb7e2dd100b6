"""Memory a model worker needs to tile one very large image, by image size and format.

For each size (5000, 10000 and 20000 pixels square) and format (JPEG, PNG, tiled TIFF),
a sparse scene of known rectangles is written with libvips, then predicted in a fresh
process by the worker-side code (`engine.inference.predict_images_tiled`, the reference
detector, window 1024, overlap 0.2, batch 8) in two ways:

- ``bands``: as Tessera does for large files: the file is read band by band;
- ``whole``: the file decoded whole first (what every image smaller than
  `BAND_READ_MIN_PIXELS` gets).

Each process reports its peak RSS (``ru_maxrss``) and its RSS once imports are done, so
the figure that matters, peak minus baseline, is what the image cost.

Results: benchmarks/results/large_image.json. Run: ``python benchmarks/large_image.py``
(``--quick`` for 5000 and 10000 only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import write_results  # noqa: E402

SIDES = (5000, 10000, 20000)
FORMATS = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif"}
WINDOW = 1024

CHILD = r"""
import json, resource, sys, time
import psutil
import torch, torchvision  # a model worker has them loaded: part of the baseline
from engine.inference import predict_images_tiled
from engine.models.reference import ColorBoxDetector
from engine.settings import ModelInfo, validate_settings
from engine.sources.bands import BandSource, band_source_for
from engine.sources.decode import decode_image_file

path, mode, window = sys.argv[1], sys.argv[2], int(sys.argv[3])
info = ModelInfo("ref", "detection", ["x"] * 7, default_conf=0.5, input_size=(512, 512))
settings = validate_settings(
    {"sliding_window": True, "window_size": window, "max_pixels": 10**9,
     "merge": "greedy_nmm", "merge_metric": "ios"}, info
)
detector = ColorBoxDetector()
predict_images_tiled(detector, [__import__("numpy").zeros((64, 64, 3), "uint8")], settings)
baseline = psutil.Process().memory_info().rss
start = time.perf_counter()
if mode == "bands":
    image = band_source_for(path, path, 10**9, min_pixels=0)
    assert isinstance(image, BandSource)
else:
    image = decode_image_file(path, 10**9)
(result,) = predict_images_tiled(detector, [image], settings)
assert result.error is None, result.error
print(json.dumps({
    "seconds": round(time.perf_counter() - start, 2),
    "baseline_mib": round(baseline / 2**20),
    "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "objects": len(result.detections),
}))
"""


def write_scene(path: Path, side: int) -> int:
    """A black square image with 16 coloured rectangles per row of 2500 px; returns count."""
    import pyvips

    image = pyvips.Image.black(side, side, bands=3)
    count = 0
    for y in range(100, side - 300, 2500):
        for x in range(100, side - 300, 2500):
            patch = (pyvips.Image.black(150, 90, bands=3) + [255, 0, 0]).cast("uchar")
            image = image.insert(patch, x, y)
            count += 1
    suffix = path.suffix
    if suffix == ".png":
        image.pngsave(str(path), compression=1)
    elif suffix == ".jpg":
        image.jpegsave(str(path), Q=100, subsample_mode="off")
    else:
        image.tiffsave(str(path), tile=True, compression="deflate")
    return count


def measure(path: Path, mode: str) -> dict:
    """Run the child in a fresh process and return its figures."""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, str(WINDOW)],
        capture_output=True,
        text=True,
        cwd=repo,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 5000 and 10000 only")
    args = parser.parse_args()
    sides = SIDES[:2] if args.quick else SIDES
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            for name, suffix in FORMATS.items():
                path = Path(tmp) / f"scene{side}{suffix}"
                expected = write_scene(path, side)
                row = {
                    "side": side,
                    "format": name,
                    "file_mib": round(path.stat().st_size / 2**20, 1),
                }
                for mode in ("bands", "whole"):
                    figures = measure(path, mode)
                    figures["image_mib"] = round(figures["peak_mib"] - figures["baseline_mib"])
                    assert figures["objects"] == expected, (path, mode, figures)
                    row[mode] = figures
                print(json.dumps(row))
                rows.append(row)
    write_results(
        "large_image",
        {
            "window": WINDOW,
            "overlap": 0.2,
            "model": "reference/color-boxes",
            "decoded_mib": {side: round(side * side * 3 / 2**20) for side in sides},
            "runs": rows,
            "notes": (
                "image_mib = peak RSS minus RSS after imports, in a fresh process per run; "
                "bands = Tessera's path for files of at least BAND_READ_MIN_PIXELS; whole = "
                "the file decoded into one array first"
            ),
            "total_seconds": round(time.perf_counter() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
