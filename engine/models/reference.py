"""A deterministic detector of solid coloured rectangles: the reference model.

It is a complete, small `ModelAdapter`, so it doubles as the example of how to write one,
and it gives tests and benchmarks a model whose right answer is known: on an image of
axis-aligned rectangles in pure colours on a dark background, it returns each rectangle's
exact box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from engine.detections import Detections
from engine.models.base import ModelAdapter

#: Class names and the RGB colour each stands for.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}


class ColorBoxDetector(ModelAdapter):
    """Find rectangles of pure colour (see `COLORS`) on a dark background.

    A pixel belongs to a colour when each channel is on the same side of 128 as the
    colour's channel. Each 8-connected region of one colour is one object; its box is the
    region's extent (x2, y2 exclusive) and its score is the share of the box the region
    fills times area / (area + 1): just under 1.0 for a clean rectangle, and lower for a
    smaller piece of one, as a tile that clips an object sees it, so that merges keep the
    whole object. Regions smaller than ``min_area`` pixels are noise.

    Args:
        min_area: Smallest region, in pixels, reported as an object.
        with_masks: Also return each region's mask (as instance segmentation).

    Example:
        >>> image = np.zeros((50, 60, 3), np.uint8); image[10:20, 5:25] = (255, 0, 0)
        >>> det = ColorBoxDetector(); det.load("cpu")
        >>> det.infer([image], 0.5)[0].xyxy.tolist()
        [[5.0, 10.0, 25.0, 20.0]]
    """

    name = "reference/color-boxes"
    task = "detection"
    classes = list(COLORS)
    default_conf = 0.5
    input_size = (512, 512)

    def __init__(self, min_area: int = 4, with_masks: bool = False) -> None:
        self.min_area = min_area
        self.with_masks = with_masks
        if with_masks:
            self.task = "instance_segmentation"
            self.name = "reference/color-masks"

    def load(self, device: str) -> None:
        """Nothing to load: the detector has no weights."""

    def infer(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """Find the coloured rectangles of every image."""
        return [self._detect(image, conf) for image in images]

    def _detect(self, image: np.ndarray, conf: float) -> Detections:
        bits = image[..., :3] >= 128
        code = (bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2]).astype(np.uint8)
        present = np.bincount(code.ravel(), minlength=8)  # pixels of each colour code
        boxes, scores, labels, masks = [], [], [], []
        structure = np.ones((3, 3), bool)
        for class_idx, rgb in enumerate(COLORS.values()):
            target = (rgb[0] >= 128) * 4 + (rgb[1] >= 128) * 2 + (rgb[2] >= 128)
            if present[target] < self.min_area:
                continue  # no region of this colour can be large enough
            regions, count = ndimage.label(code == target, structure=structure)
            for number, found in enumerate(ndimage.find_objects(regions), start=1):
                if found is None:
                    continue
                region = regions[found] == number
                area = int(region.sum())
                if area < self.min_area:
                    continue
                score = (area / region.size) * (area / (area + 1.0))
                if score < conf:
                    continue
                rows, cols = found
                boxes.append([cols.start, rows.start, cols.stop, rows.stop])
                scores.append(score)
                labels.append(class_idx)
                if self.with_masks:
                    mask = np.zeros(image.shape[:2], bool)
                    mask[found] = region
                    masks.append(mask)
        if not boxes:
            return Detections.empty(with_masks=self.with_masks)
        masks_rle = None
        if self.with_masks:
            from engine.masks import encode_masks

            masks_rle = encode_masks(np.stack(masks))
        return Detections(
            np.array(boxes, np.float32), np.array(scores), np.array(labels), masks_rle
        )
