"""Generated images with known objects, for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from engine.models.reference import COLORS

Box = tuple[str, int, int, int, int]


def draw_scene(height: int, width: int, boxes: list[Box]) -> np.ndarray:
    """Draw solid rectangles (class name, x1, y1, x2, y2; x2/y2 exclusive) on black."""
    image = np.zeros((height, width, 3), np.uint8)
    for name, x1, y1, x2, y2 in boxes:
        image[y1:y2, x1:x2] = COLORS[name]
    return image


def random_boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    count: int,
    min_side: int = 8,
    max_side: int = 40,
    gap: int = 3,
) -> list[Box]:
    """Place up to ``count`` non-touching rectangles of random colour inside the image."""
    names = list(COLORS)
    taken = np.zeros((height, width), bool)
    boxes: list[Box] = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        w, h = rng.integers(min_side, max_side + 1, size=2)
        x1 = int(rng.integers(0, max(1, width - w)))
        y1 = int(rng.integers(0, max(1, height - h)))
        x2, y2 = min(width, x1 + int(w)), min(height, y1 + int(h))
        if taken[max(0, y1 - gap) : y2 + gap, max(0, x1 - gap) : x2 + gap].any():
            continue
        taken[y1:y2, x1:x2] = True
        boxes.append((names[int(rng.integers(len(names)))], x1, y1, x2, y2))
    return boxes


def boxes_array(boxes: list[Box]) -> np.ndarray:
    """Return the (N, 4) xyxy array of ``boxes``, sorted like `sort_xyxy`."""
    return sort_xyxy(np.array([b[1:] for b in boxes], np.float32).reshape(-1, 4))


def sort_xyxy(xyxy: np.ndarray) -> np.ndarray:
    """Sort boxes by (y1, x1) so two detectors' outputs can be compared row by row."""
    order = np.lexsort((xyxy[:, 0], xyxy[:, 1]))
    return xyxy[order]
