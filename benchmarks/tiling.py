"""Sliding-window (tiled) prediction: Tessera against a bare loop, SAHI and supervision.

Two figures, one run:

1) Heavy model ("heavy"): a generated 6000x4000 RGB image (noise and shapes, seed 0) cut
   into 640x640 windows with 0.2 overlap (96 tiles), torchvision
   fasterrcnn_mobilenet_v3_large_fpn with random weights (seed 0), saved as a Tessera
   checkpoint so that every side runs the very same weights. Timed: a bare loop (the same
   tiles through the network in batches of 8, no merging), Tessera's ``predict(...,
   sliding_window=True, merge="nms")`` and SAHI's ``get_sliced_prediction`` (NMS, IoU 0.5)
   over SAHI's torchvision wrapper around the same network object; then Tessera again
   with batch_size=1, as SAHI's wrapper forwards one tile at a time. Target: Tessera
   within 10% of the bare loop.
2) Many objects, cheap model ("many"): a generated 8000x8000 scene with 5,000 known
   rectangles (10..40 px) and the reference detector (`ColorBoxDetector`), merged with
   greedy NMM, IoS 0.5. Timed: a bare loop (the detector over the same tiles, no
   merging), Tessera, SAHI (a thin `DetectionModel` around the detector) and
   supervision's ``InferenceSlicer`` (non-max merge, IoS 0.5, its closest setting).
   Targets: Tessera at least 3x faster than SAHI, the same merged boxes as SAHI, and every
   known object found exactly once within 1 px.

3) The merge alone ("merge"): 5,000 known rectangles (10..40 px, 3 classes) in an
   8302x8302 scene cut into 400 windows (20 x 20, 512 px, 0.2 overlap), "detected" by
   pure geometry (each tile sees every object clipped to it, with the object's own score,
   so pieces tie the whole object; `tests/test_tiling_merge.tile_predictions`). Timed
   apart from any detector: Tessera's `merge_detections` (default whole-first order, with
   each detection's tile) against SAHI's postprocess alone (``GreedyNMMPostprocess``,
   ``NMSPostprocess``, ``NMMPostprocess``, IOS 0.5, numpy backend) on the same shifted
   tile predictions; best of 5 timed calls after a warm-up. Target: Tessera <= 0.1 of
   SAHI's time; and each side's count of objects found once, missed and extra.

Each side runs once to warm up, then a second, timed run (for the heavy model the warm-up
runs on a 1280x1280 crop, 9 tiles, to keep the run short on a small CPU machine;
``--heavy-warmup full`` warms up on the whole image). Needs the ``bench`` extra
(``pip install -e '.[bench]' -c constraints.txt``: sahi, supervision).

    python benchmarks/tiling.py [--part heavy|many|merge|both|all] [--quick]

``both`` runs heavy and many; ``all`` adds merge. Parts not run keep their figures from
the previous benchmarks/results/tiling.json (marked ``carried_over_from``).

``--quick`` runs on small crops (a smoke test; its figures are not the benchmark's).
The whole run takes about 7.5 minutes on 2 CPU cores (heavy ~6.5, many ~1).
Writes benchmarks/results/tiling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import RESULTS, write_results  # noqa: E402
from scenes import boxes_array, draw_scene, random_boxes  # noqa: E402

ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
WINDOW = 640
OVERLAP = 0.2
BATCH_SIZE = 8
MAX_PIXELS = 500_000_000
HEAVY_SIZE_WH = (6000, 4000)
HEAVY_QUICK_WH = (1920, 1280)
HEAVY_WARMUP_CROP = 1280
HEAVY_CONF = 0.01
MANY_SIZE = 8000
MANY_QUICK_SIZE = 2000
MANY_OBJECTS = 5000
MANY_CONF = 0.5
#: Timed rounds of each side after its warm-up, taken in turn; each side's best is kept
#: (one side's run must not be judged by the moment the machine happened to be busy).
MANY_ROUNDS = 3


# ----------------------------------------------------------------------------- helpers
def heavy_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Dark noise with random filled rectangles and discs (HWC RGB uint8)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    count = max(1, width * height // 40_000)
    for _ in range(count):
        w, h = (int(v) for v in rng.integers(20, 160, size=2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = rng.integers(0, 256, 3, dtype=np.uint8)
        if rng.random() < 0.5:
            image[y : y + h, x : x + w] = colour
        else:
            yy, xx = np.ogrid[:h, :w]
            disc = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1
            image[y : y + h, x : x + w][disc] = colour
    return image


def timed(fn, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Return (seconds, result) of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def same_boxes(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> dict[str, Any]:
    """Compare two box sets: counts, and whether every box of each has one in the other.

    Boxes are matched to their nearest neighbour (largest coordinate difference), not by
    sorting: a float32 / float64 rounding of 1e-5 would reorder a sort of near-equal boxes.
    """
    from scipy.spatial import cKDTree

    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return {"identical": len(a) == len(b), "counts": [len(a), len(b)], "max_abs_diff": None}
    a_to_b, _ = cKDTree(b).query(a, p=np.inf)
    b_to_a, _ = cKDTree(a).query(b, p=np.inf)
    matched = [int((a_to_b <= tol).sum()), int((b_to_a <= tol).sum())]
    return {
        "identical": len(a) == len(b) and matched == [len(a), len(b)],
        "counts": [len(a), len(b)],
        "matched_within_tol": matched,
        "tol": tol,
        "max_abs_diff": float(max(a_to_b.max(), b_to_a.max())),
    }


def found_once(known: np.ndarray, found: np.ndarray, tol: float = 1.0) -> dict[str, int]:
    """How many known boxes have exactly one found box within ``tol`` px on every side."""
    from scipy.spatial import cKDTree

    if len(found) == 0:
        return {"exactly_once": 0, "missed": len(known), "more_than_once": 0}
    tree = cKDTree(np.asarray(found, np.float64))
    hits = tree.query_ball_point(np.asarray(known, np.float64), r=tol + 1e-9, p=np.inf)
    counts = np.array([len(h) for h in hits])
    return {
        "exactly_once": int((counts == 1).sum()),
        "missed": int((counts == 0).sum()),
        "more_than_once": int((counts > 1).sum()),
    }


def sahi_grid_matches(height: int, width: int) -> bool:
    """Does SAHI's slice grid equal `engine.tiling.tile_grid`'s for this image?"""
    from sahi.slicing import get_slice_bboxes

    from engine.tiling import tile_grid

    theirs = get_slice_bboxes(height, width, WINDOW, WINDOW, False, OVERLAP, OVERLAP)
    ours = [list(t.xyxy) for t in tile_grid(height, width, WINDOW, OVERLAP)]
    return sorted(map(tuple, theirs)) == sorted(map(tuple, ours))


def supervision_grid_matches(height: int, width: int, overlap_px: int) -> bool:
    """Does supervision's slice grid equal `engine.tiling.tile_grid`'s for this image?"""
    import supervision as sv

    from engine.tiling import tile_grid

    theirs = sv.InferenceSlicer._generate_offset(
        (width, height), (WINDOW, WINDOW), (overlap_px, overlap_px)
    )
    ours = [t.xyxy for t in tile_grid(height, width, WINDOW, OVERLAP)]
    return sorted(tuple(int(v) for v in r) for r in theirs) == sorted(ours)


def tessera_predict(model, image: np.ndarray, batch_size: int = BATCH_SIZE, **options: Any) -> Any:
    """One sliding-window `predict` of one image; returns its Prediction."""
    (prediction,) = model.predict(
        image,
        sliding_window=True,
        window_size=WINDOW,
        overlap=OVERLAP,
        batch_size=batch_size,
        max_pixels=MAX_PIXELS,
        progress=False,
        **options,
    )
    assert prediction.error is None, prediction.error
    return prediction


def sahi_sliced(image: np.ndarray, sahi_model, method: str, metric: str) -> np.ndarray:
    """SAHI's sliced prediction of one image; returns (N, 6) x1 y1 x2 y2 score class."""
    from sahi.predict import get_sliced_prediction

    result = get_sliced_prediction(
        image,
        sahi_model,
        slice_height=WINDOW,
        slice_width=WINDOW,
        overlap_height_ratio=OVERLAP,
        overlap_width_ratio=OVERLAP,
        perform_standard_pred=False,
        postprocess_type=method,
        postprocess_match_metric=metric,
        postprocess_match_threshold=0.5,
        verbose=0,
        batch_size=BATCH_SIZE,
        force_postprocess_type=True,
    )
    rows = [
        [*p.bbox.to_xyxy(), float(p.score.value), int(p.category.id)]
        for p in result.object_prediction_list
    ]
    return np.array(rows, np.float64).reshape(-1, 6)


# ----------------------------------------------------------------------------- heavy
class BareLoop:
    """The network over the same tiles in batches of ``BATCH_SIZE``; no merging.

    The network's own score threshold is set to ``conf``, as Tessera's adapter does, so
    every side does the same model work.
    """

    def __init__(self, network, conf: float, device: str = "cpu") -> None:
        self.network, self.conf, self.device = network, conf, device

    def run(self, image: np.ndarray) -> int:
        """Predict every tile of ``image``; return the number of (unmerged) boxes."""
        import torch

        from engine.tiling import tile_grid

        self.network.roi_heads.score_thresh = self.conf
        tiles = tile_grid(image.shape[0], image.shape[1], WINDOW, OVERLAP)
        found = 0
        with torch.inference_mode():
            for start in range(0, len(tiles), BATCH_SIZE):
                batch = [
                    torch.from_numpy(image[t.y : t.y + t.height, t.x : t.x + t.width])
                    .to(self.device)
                    .permute(2, 0, 1)
                    .float()
                    .div_(255.0)
                    for t in tiles[start : start + BATCH_SIZE]
                ]
                for out in self.network(batch):
                    found += int((out["scores"] >= self.conf).sum())
        return found


def run_heavy(
    folder: Path, quick: bool, warmup: str, threads: int, conf: float, device: str = "cpu"
) -> dict:
    """Figure 1: the heavy model over a 6000x4000 image (or a crop with ``quick``)."""
    import torch
    import torchvision
    from sahi.models.torchvision import TorchVisionDetectionModel
    from sahi.postprocess.backends import resolve_backend

    import engine
    from engine.tiling import tile_grid

    width, height = HEAVY_QUICK_WH if quick else HEAVY_SIZE_WH
    image = heavy_image(*HEAVY_SIZE_WH)[:height, :width]
    image = np.ascontiguousarray(image)
    crop = image[:HEAVY_WARMUP_CROP, :HEAVY_WARMUP_CROP] if warmup == "crop" else image
    tiles = len(tile_grid(height, width, WINDOW, OVERLAP))
    full_tiles = len(tile_grid(HEAVY_SIZE_WH[1], HEAVY_SIZE_WH[0], WINDOW, OVERLAP))

    torch.manual_seed(0)
    builder = getattr(torchvision.models.detection, ARCH)
    network = builder(weights=None, weights_backbone=None).eval()
    classes = torchvision.models.get_model_weights(ARCH).DEFAULT.meta["categories"]
    checkpoint = engine.save_checkpoint(
        folder / "frcnn.pt", f"torchvision/{ARCH}", classes, network
    )
    network.roi_heads.score_thresh = conf  # what Tessera's adapter does with conf
    network.to(device)

    bare = BareLoop(network, conf, device)
    sahi_model = TorchVisionDetectionModel(
        model=network,
        confidence_threshold=conf,
        device=device,
        category_mapping={str(i): name for i, name in enumerate(classes)},
    )

    def sahi_run(img: np.ndarray) -> np.ndarray:
        with torch.inference_mode():  # SAHI's wrapper does not disable autograd itself
            return sahi_sliced(img, sahi_model, "NMS", "IOU")

    model = engine.deploy(checkpoint, threads=threads, device=device)
    try:
        options = {
            "conf": conf,
            "merge": "nms",
            "merge_metric": "iou",
            "merge_threshold": 0.5,
            "sahi_compatible": True,  # all scores tie here: SAHI's order, for equal boxes
        }
        warm = {
            "bare": timed(bare.run, crop)[0],
            "tessera": timed(tessera_predict, model, crop, **options)[0],
            "sahi": timed(sahi_run, crop)[0],
        }
        bare_s, bare_found = timed(bare.run, image)
        tessera_s, prediction = timed(tessera_predict, model, image, **options)
        sahi_s, sahi_rows = timed(sahi_run, image)
        # SAHI's wrapper forwards one tile at a time; Tessera the same way, for reference
        tessera1_s, prediction1 = timed(tessera_predict, model, image, 1, **options)
    finally:
        model.close()
    return {
        "image_wh": [width, height],
        "cropped_from_wh": list(HEAVY_SIZE_WH) if quick else None,
        "model": f"torchvision/{ARCH} (random weights, torch.manual_seed(0))",
        "device": device,
        "conf": conf,
        "window": WINDOW,
        "overlap": OVERLAP,
        "batch_size": BATCH_SIZE,
        "torch_threads": threads,
        "merge": "nms, iou, 0.5, sahi_compatible (Tessera); NMS, IOU, 0.5 (SAHI); none (bare)",
        "tiles": tiles,
        "tiles_full_6000x4000": full_tiles,
        "sahi_grid_same_as_tessera": sahi_grid_matches(height, width),
        "sahi_postprocess_backend": resolve_backend(),
        "warmup": (
            f"one run on a {HEAVY_WARMUP_CROP}x{HEAVY_WARMUP_CROP} crop "
            f"({len(tile_grid(crop.shape[0], crop.shape[1], WINDOW, OVERLAP))} tiles)"
            if warmup == "crop"
            else "one run on the whole image"
        ),
        "warmup_seconds": {k: round(v, 2) for k, v in warm.items()},
        "seconds": {
            "bare": round(bare_s, 2),
            "tessera": round(tessera_s, 2),
            "sahi": round(sahi_s, 2),
            "tessera_batch_size_1": round(tessera1_s, 2),
        },
        "tessera_over_bare": round(tessera_s / bare_s, 3),
        "target_tessera_over_bare": 1.1,
        "target_met": tessera_s / bare_s <= 1.1,
        "sahi_over_tessera": round(sahi_s / tessera_s, 3),
        "sahi_over_tessera_batch_size_1": round(sahi_s / tessera1_s, 3),
        "objects": {
            "bare_unmerged": bare_found,
            "tessera": len(prediction),
            "sahi": len(sahi_rows),
            "tessera_batch_size_1": len(prediction1),
        },
        "tessera_vs_sahi_boxes": same_boxes(prediction.boxes, sahi_rows[:, :4]),
        "tessera_batch_size_1_vs_sahi_boxes": same_boxes(prediction1.boxes, sahi_rows[:, :4]),
        "tessera_batch_size_8_vs_1_boxes": same_boxes(prediction.boxes, prediction1.boxes),
    }


# ----------------------------------------------------------------------------- many
def sahi_color_box_model(conf: float):
    """A SAHI `DetectionModel` around a `ColorBoxDetector` (SAHI has no wrapper for it)."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    from engine.models.reference import ColorBoxDetector

    class ColorBoxSahiModel(DetectionModel):
        """SAHI's view of the reference detector: one tile per `perform_inference`."""

        def load_model(self) -> None:
            """Build the detector (it has no weights)."""
            self.set_model(ColorBoxDetector())

        def set_model(self, model: Any, **kwargs: Any) -> None:
            """Use ``model`` and name its classes."""
            model.load("cpu")
            self.model = model
            self.category_mapping = {str(i): name for i, name in enumerate(model.classes)}

        def perform_inference(self, image: np.ndarray) -> None:
            """Detect the rectangles of one tile (scores >= the confidence threshold)."""
            self._original_predictions = self.model.infer([image], self.confidence_threshold)

        def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list=None, full_shape_list=None
        ) -> None:
            shift_amount_list = shift_amount_list or [[0, 0]]
            per_image = []
            for i, detections in enumerate(self._original_predictions):
                shift = shift_amount_list[i] if i < len(shift_amount_list) else [0, 0]
                full_shape = full_shape_list[i] if full_shape_list else None
                per_image.append(
                    [
                        ObjectPrediction(
                            bbox=[float(v) for v in box],
                            category_id=int(cls),
                            category_name=self.category_mapping[str(int(cls))],
                            score=float(score),
                            shift_amount=list(shift),
                            full_shape=full_shape,
                        )
                        for box, score, cls in zip(
                            detections.xyxy, detections.scores, detections.class_idxs
                        )
                    ]
                )
            self._object_prediction_list_per_image = per_image

    return ColorBoxSahiModel(confidence_threshold=conf, device="cpu")


def supervision_slicer(conf: float, overlap_px: int):
    """supervision's `InferenceSlicer` over a `ColorBoxDetector`, batches of ``BATCH_SIZE``."""
    import supervision as sv

    from engine.models.reference import ColorBoxDetector

    detector = ColorBoxDetector()
    detector.load("cpu")

    def callback(tiles: list[np.ndarray]) -> list[sv.Detections]:
        return [
            sv.Detections(
                xyxy=d.xyxy.astype(np.float32).reshape(-1, 4),
                confidence=np.asarray(d.scores, np.float32),
                class_id=np.asarray(d.class_idxs, int),
            )
            for d in detector.infer(tiles, conf)
        ]

    return sv.InferenceSlicer(
        callback,
        slice_wh=WINDOW,
        overlap_wh=overlap_px,
        overlap_filter=sv.OverlapFilter.NON_MAX_MERGE,
        iou_threshold=0.5,
        overlap_metric=sv.OverlapMetric.IOS,
        thread_workers=1,
        batch_size=BATCH_SIZE,
    )


def bare_color_boxes(image: np.ndarray, conf: float) -> int:
    """The reference detector over the same tiles in batches, no merging; boxes found."""
    from engine.models.reference import ColorBoxDetector
    from engine.tiling import tile_grid

    detector = ColorBoxDetector()
    detector.load("cpu")
    tiles = tile_grid(image.shape[0], image.shape[1], WINDOW, OVERLAP)
    found = 0
    for start in range(0, len(tiles), BATCH_SIZE):
        batch = tiles[start : start + BATCH_SIZE]
        crops = [image[t.y : t.y + t.height, t.x : t.x + t.width] for t in batch]
        found += sum(len(d) for d in detector.infer(crops, conf))
    return found


def run_many(quick: bool, threads: int, conf: float) -> dict:
    """Figure 2: 5,000 known rectangles in an 8000x8000 scene, the reference detector."""
    import engine
    from engine.tiling import tile_grid

    size = MANY_QUICK_SIZE if quick else MANY_SIZE
    wanted = round(MANY_OBJECTS * size * size / MANY_SIZE**2)
    boxes = random_boxes(np.random.default_rng(0), size, size, wanted, 10, 40, gap=4)
    assert len(boxes) == wanted, (len(boxes), wanted)
    image = draw_scene(size, size, boxes)
    known = boxes_array(boxes)
    overlap_px = round(OVERLAP * WINDOW)

    sahi_model = sahi_color_box_model(conf)
    slicer = supervision_slicer(conf, overlap_px)
    options = {"conf": conf, "merge": "greedy_nmm", "merge_metric": "ios", "merge_threshold": 0.5}
    model = engine.deploy("reference/color-boxes", threads=threads)
    try:
        sides = {
            "bare": lambda: bare_color_boxes(image, conf),
            "tessera": lambda: tessera_predict(model, image, **options),
            "sahi": lambda: sahi_sliced(image, sahi_model, "GREEDYNMM", "IOS"),
            "supervision": lambda: slicer(image),
        }
        warm = {name: timed(fn)[0] for name, fn in sides.items()}
        rounds: dict[str, list[float]] = {name: [] for name in sides}
        results: dict[str, Any] = {}
        for _ in range(MANY_ROUNDS):
            for name, fn in sides.items():
                seconds, results[name] = timed(fn)
                rounds[name].append(seconds)
        runs = {name: (warm[name], min(rounds[name]), results[name]) for name in sides}
    finally:
        model.close()
    bare_found = runs["bare"][2]
    tessera, sahi_rows, sv_dets = (runs[k][2] for k in ("tessera", "sahi", "supervision"))
    seconds = {k: round(v[1], 2) for k, v in runs.items()}
    speedup = runs["sahi"][1] / runs["tessera"][1]
    tessera_recall = found_once(known, tessera.boxes)
    scores_close = len(tessera) == len(sahi_rows) and bool(
        np.allclose(np.sort(tessera.scores), np.sort(sahi_rows[:, 4]), atol=1e-6)
    )
    return {
        "image_wh": [size, size],
        "objects_known": len(known),
        "object_sides_px": [10, 40],
        "object_gap_px": 4,
        "model": "reference/color-boxes (ColorBoxDetector)",
        "conf": conf,
        "window": WINDOW,
        "overlap": OVERLAP,
        "batch_size": BATCH_SIZE,
        "tiles": len(tile_grid(size, size, WINDOW, OVERLAP)),
        "sahi_grid_same_as_tessera": sahi_grid_matches(size, size),
        "supervision_grid_same_as_tessera": supervision_grid_matches(size, size, overlap_px),
        "merge": {
            "tessera": "greedy_nmm, ios, 0.5",
            "sahi": "GREEDYNMM, IOS, 0.5 (force_postprocess_type=True)",
            "supervision": (
                f"InferenceSlicer(slice_wh={WINDOW}, overlap_wh={overlap_px}, "
                "overlap_filter=NON_MAX_MERGE, overlap_metric=IOS, iou_threshold=0.5, "
                f"thread_workers=1, batch_size={BATCH_SIZE})"
            ),
        },
        "warmup": "one full run of each side before the timed runs",
        "warmup_seconds": {k: round(v[0], 2) for k, v in runs.items()},
        "timing": f"best of {MANY_ROUNDS} rounds, the sides taken in turn in each round",
        "rounds_seconds": {k: [round(v, 2) for v in r] for k, r in rounds.items()},
        "seconds": seconds,
        "tessera_model_seconds": round(tessera.latency_ms / 1000.0, 2),
        "sahi_over_tessera": round(speedup, 2),
        "supervision_over_tessera": round(runs["supervision"][1] / runs["tessera"][1], 2),
        "tessera_over_bare": round(runs["tessera"][1] / runs["bare"][1], 2),
        "sahi_over_bare": round(runs["sahi"][1] / runs["bare"][1], 2),
        "target_sahi_over_tessera": 3.0,
        "target_speedup_met": speedup >= 3.0,
        "objects": {
            "bare_unmerged": bare_found,
            "tessera": len(tessera),
            "sahi": len(sahi_rows),
            "supervision": len(sv_dets),
        },
        "tessera_vs_sahi_boxes": same_boxes(tessera.boxes, sahi_rows[:, :4]),
        "tessera_vs_sahi_scores_equal": scores_close,
        "tessera_vs_supervision_boxes": same_boxes(tessera.boxes, sv_dets.xyxy),
        "found_exactly_once_within_1px": {
            "tessera": tessera_recall,
            "sahi": found_once(known, sahi_rows[:, :4]),
            "supervision": found_once(known, sv_dets.xyxy),
        },
        "target_all_found_once_met": tessera_recall["exactly_once"] == len(known),
    }


# ----------------------------------------------------------------------------- merge
MERGE_TILES_PER_SIDE = 20
MERGE_WINDOW = 512
MERGE_REPEATS = 15


def best_of(repeats: int, fn) -> tuple[float, Any]:
    """Warm up once, then the fastest of ``repeats`` timed calls (robust on a busy machine)."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        seconds, result = timed(fn)
        best = min(best, seconds)
    return best, result


def on_a_copy(merge, predictions: list) -> list:
    """SAHI's postprocess on a copy of the list (it rewrites the list it is given)."""
    return merge(list(predictions))


def run_merge(quick: bool) -> dict:
    """Figure 3: the merge alone, Tessera against SAHI's postprocess, same tile predictions."""
    from sahi.postprocess.backends import resolve_backend, set_postprocess_backend
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction
    from test_tiling_merge import tally, tile_predictions

    from engine.tiling import merge_detections, tile_grid

    per_side = 5 if quick else MERGE_TILES_PER_SIDE
    stride = MERGE_WINDOW - round(OVERLAP * MERGE_WINDOW)
    size = stride * (per_side - 1) + MERGE_WINDOW
    wanted = round(MANY_OBJECTS * per_side**2 / MERGE_TILES_PER_SIDE**2)
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, size, size, wanted, 10, 40, gap=4)
    known = np.array([b[1:] for b in boxes], np.float32)
    scores = rng.uniform(0.5, 1.0, len(known)).astype(np.float32)
    classes = rng.integers(0, 3, len(known))
    found, windows = tile_predictions(known, scores, classes, size, size, MERGE_WINDOW, OVERLAP)
    set_postprocess_backend("numpy")
    predictions = [
        ObjectPrediction(bbox=b.tolist(), category_id=int(c), score=float(s))
        for b, s, c in zip(found.xyxy, found.scores, found.class_idxs)
    ]
    sahi_post = {"greedy_nmm": GreedyNMMPostprocess, "nms": NMSPostprocess, "nmm": NMMPostprocess}
    figures: dict[str, Any] = {}
    for method, post in sahi_post.items():
        merge = post(0.5, "IOS", False)
        sahi_s, sahi_out = best_of(MERGE_REPEATS, partial(on_a_copy, merge, predictions))
        ours_s, ours = best_of(
            MERGE_REPEATS,
            partial(
                merge_detections, found, method, "ios", 0.5, windows=windows, image_size=(size,) * 2
            ),
        )
        compat_s, compat = best_of(
            MERGE_REPEATS,
            partial(merge_detections, found, method, "ios", 0.5, sahi_compatible=True),
        )
        sahi_boxes = np.array([p.bbox.to_xyxy() for p in sahi_out], np.float32).reshape(-1, 4)
        figures[method] = {
            "seconds": {
                "tessera": round(ours_s, 4),
                "tessera_sahi_compatible": round(compat_s, 4),
                "sahi_postprocess": round(sahi_s, 4),
            },
            "tessera_over_sahi": round(ours_s / sahi_s, 3),
            "target_tessera_over_sahi": 0.1,
            "target_met": ours_s / sahi_s <= 0.1,
            "found": {
                "tessera": tally(ours.xyxy, known),
                "tessera_sahi_compatible": tally(compat.xyxy, known),
                "sahi": tally(sahi_boxes, known),
            },
        }
    return {
        "image_wh": [size, size],
        "tiles": len(tile_grid(size, size, MERGE_WINDOW, OVERLAP)),
        "window": MERGE_WINDOW,
        "overlap": OVERLAP,
        "objects_known": len(known),
        "tile_predictions": len(found),
        "classes": 3,
        "scores": "one per object, uniform in [0.5, 1); a clipped piece has its object's",
        "merge": "ios, 0.5, class-wise; Tessera's default order (windows given) vs SAHI",
        "sahi_postprocess_backend": resolve_backend(),
        "timing": f"best of {MERGE_REPEATS} calls after one warm-up, each side",
        "methods": figures,
    }


def carried_over(figures: dict[str, Any], parts: list[str]) -> None:
    """Copy the parts not run this time from the previous results file."""
    previous = RESULTS / "tiling.json"
    if not previous.exists():
        return
    old = json.loads(previous.read_text())
    for key in parts:
        if key not in figures and key in old:
            # a part carried over before keeps the date it was measured at
            since = old[key].get("carried_over_from", old.get("measured_at"))
            figures[key] = {**old[key], "carried_over_from": since}


# ----------------------------------------------------------------------------- main
def main() -> None:
    """Run the chosen parts and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("heavy", "many", "merge", "both", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="small crops: a smoke test")
    parser.add_argument("--heavy-warmup", choices=("crop", "full"), default="crop")
    parser.add_argument("--heavy-conf", type=float, default=HEAVY_CONF)
    parser.add_argument("--many-conf", type=float, default=MANY_CONF)
    parser.add_argument(
        "--device", default="cpu", help="heavy part's device; cuda writes tiling_gpu.json"
    )
    args = parser.parse_args()

    import ray
    import sahi
    import supervision
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    ray.init(include_dashboard=False, log_to_driver=False)
    figures: dict[str, Any] = {
        "quick": args.quick,
        "versions": {"sahi": sahi.__version__, "supervision": supervision.__version__},
    }
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.part in ("merge", "all"):
                figures["merge_only"] = run_merge(args.quick)
            if args.part in ("heavy", "both", "all"):
                figures["heavy_model"] = run_heavy(
                    Path(tmp), args.quick, args.heavy_warmup, threads, args.heavy_conf, args.device
                )
            if args.part in ("many", "both", "all"):
                figures["many_objects"] = run_many(args.quick, threads, args.many_conf)
    finally:
        ray.shutdown()
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.device == "cpu" and not args.quick:
        carried_over(figures, ["merge_only", "heavy_model", "many_objects"])
    figures["notes"] = [
        "Every side runs in one process on the same CPUs; Tessera's model worker is a Ray "
        "actor with the same torch thread count as the driver.",
        "Heavy model: the same random weights everywhere (one network object for the bare "
        "loop and SAHI's TorchVisionDetectionModel(model=...), its Tessera checkpoint "
        "for Tessera); the network's roi_heads.score_thresh is set to conf on every side. "
        "Faster R-CNN resizes each 640 tile to 800 inside the network on every side.",
        "Heavy model: with random weights every class score is about 1/91 (0.01144), so "
        "conf must be below that for any box to exist; each tile then yields the "
        "network's 100 detections per image, all with the same score, so NMS order rests "
        "on the x1, y1, x2, y2 tie-break (Tessera and SAHI share it). Box comparisons "
        "match nearest neighbours both ways within 1e-3 px (float32 vs float64 shifts "
        "differ by ~6e-5).",
        "SAHI's torchvision wrapper has no native batching: batch_size=8 is passed, but "
        "it runs one tile per forward; the SAHI call is wrapped in torch.inference_mode() "
        "(its wrapper does not disable autograd), which only helps SAHI. On a small CPU a "
        "batch of 8 Faster R-CNN tiles can be slower per tile than single tiles (same "
        "outputs), so seconds.tessera_batch_size_1 (Tessera with batch_size=1, timed "
        "after the others, no separate warm-up) is the like-for-like figure against SAHI; "
        "the bare loop and seconds.tessera use batch 8 as specified.",
        "tessera_batch_size_8_vs_1_boxes compares Tessera's own outputs at batch 8 and 1: "
        "a difference there comes from batched vs single-image forwards of the network "
        "(float-level differences in some tiles), which NMS over all-tied scores turns "
        "into different kept boxes; tessera_batch_size_1_vs_sahi_boxes is the like-for-like "
        "merge comparison.",
        "Many objects: SAHI has no wrapper for the reference detector, so a thin custom "
        "DetectionModel runs ColorBoxDetector.infer on each slice.",
        "supervision has no greedy NMM: NON_MAX_MERGE with IOS 0.5 is its closest merge.",
        "Many objects: 'bare' is the reference detector over the same tiles in batches of "
        "8 with no merging, in this process: a floor for every side, so sahi_over_bare "
        "bounds the speedup any tiled engine can show over SAHI with this detector.",
    ]
    write_results("tiling" if args.device == "cpu" else "tiling_gpu", figures)


if __name__ == "__main__":
    main()
