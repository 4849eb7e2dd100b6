"""Run a loaded model over decoded images: resize, micro-batch, filter, map back.

This is the work a model worker does for each batch the pipeline hands it. It is plain
Python over a `ModelAdapter`, so it is tested without Ray.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine.detections import Detections
from engine.models.base import ModelAdapter
from engine.settings import PredictSettings


@dataclass
class ImageResult:
    """The outcome for one image: its detections, or why it failed."""

    detections: Detections | None
    error: str | None = None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HWC RGB uint8 image to (height, width) with bilinear filtering."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def predict_images(
    adapter: ModelAdapter, images: Sequence[np.ndarray], settings: PredictSettings
) -> list[ImageResult]:
    """Predict every image, in micro-batches of ``settings.batch_size``.

    1) resize each image to ``img_size`` when one is set;
    2) run the adapter over micro-batches; if a batch fails, run its images one by one so
       that only the image that fails is marked failed;
    3) keep objects at or above ``conf`` and of the wanted classes;
    4) scale the objects back into original-image pixels.

    Args:
        adapter: A loaded model adapter.
        images: HWC RGB uint8 images of any sizes.
        settings: Validated settings.

    Returns:
        One ImageResult per image, in order.
    """
    if settings.sliding_window:
        return predict_images_tiled(adapter, images, settings)
    results: list[ImageResult] = []
    for start in range(0, len(images), settings.batch_size):
        originals = list(images[start : start + settings.batch_size])
        inputs = [
            resize_image(im, settings.img_size) if settings.img_size else im for im in originals
        ]
        for original, model_input, outcome in zip(
            originals, inputs, _infer_isolating_failures(adapter, inputs, settings.conf)
        ):
            if isinstance(outcome, str):
                results.append(ImageResult(None, outcome))
                continue
            results.append(ImageResult(_postprocess(outcome, original, model_input, settings)))
    return results


def predict_images_tiled(
    adapter: ModelAdapter, images: Sequence[np.ndarray], settings: PredictSettings
) -> list[ImageResult]:
    """Predict every image in overlapping tiles; tiles of all images share model batches.

    1) resize each image to ``img_size`` when one is set, then cut it into tiles (views,
       not copies), plus the whole image when ``full_image``;
    2) run every tile of every image through the adapter in micro-batches of
       ``batch_size``, isolating a failing tile to its image;
    3) per image: keep objects at or above ``conf`` and of the wanted classes, move them
       from tile to image pixels, and merge the duplicates that overlapping tiles found;
    4) scale the objects back into original-image pixels.
    """
    from engine.tiling import merge_detections, tile_grid

    inputs = [resize_image(im, settings.img_size) if settings.img_size else im for im in images]
    # 1) every crop of every image, with where it came from
    crops: list[tuple[int, int, int, np.ndarray]] = []  # image index, x, y, pixels
    for index, image in enumerate(inputs):
        height, width = image.shape[:2]
        for tile in tile_grid(height, width, settings.window_size, settings.overlap):
            crop = image[tile.y : tile.y + tile.height, tile.x : tile.x + tile.width]
            crops.append((index, tile.x, tile.y, crop))
        if settings.full_image:
            crops.append((index, 0, 0, image))
    # 2) the crops in shared micro-batches
    parts: list[list[Detections]] = [[] for _ in inputs]
    errors: dict[int, str] = {}
    for start in range(0, len(crops), settings.batch_size):
        chunk = crops[start : start + settings.batch_size]
        outcomes = _infer_isolating_failures(adapter, [c[3] for c in chunk], settings.conf)
        for (index, x, y, _), outcome in zip(chunk, outcomes):
            if isinstance(outcome, str):
                errors.setdefault(index, outcome)
                continue
            # 3) filter first (it makes merging cheap), then move into image pixels
            found = _filtered(outcome, settings)
            if len(found) or not parts[index]:
                height, width = inputs[index].shape[:2]
                parts[index].append(found.shifted(x, y, height, width))
    results = []
    for index, (original, model_input) in enumerate(zip(images, inputs)):
        if index in errors:
            results.append(ImageResult(None, errors[index]))
            continue
        merged = merge_detections(
            Detections.merge(parts[index]),
            method=settings.merge,
            metric=settings.merge_metric,
            threshold=settings.merge_threshold,
            class_agnostic=settings.class_agnostic,
        )
        # 4) back into original pixels
        (h, w), (mh, mw) = original.shape[:2], model_input.shape[:2]
        if (h, w) != (mh, mw):
            merged = merged.scaled(w / mw, h / mh, h, w)
        results.append(ImageResult(merged))
    return results


def _filtered(detections: Detections, settings: PredictSettings) -> Detections:
    detections = detections.with_min_score(settings.conf)
    if settings.class_idxs is not None:
        detections = detections.with_classes(settings.class_idxs)
    return detections


def _infer_isolating_failures(
    adapter: ModelAdapter, inputs: list[np.ndarray], conf: float
) -> Iterator[Detections | str]:
    try:
        outputs = adapter.infer(inputs, conf)
        if len(outputs) != len(inputs):
            raise RuntimeError(
                f"model returned {len(outputs)} results for a batch of {len(inputs)} images"
            )
        yield from outputs
        return
    except Exception:
        if len(inputs) == 1:
            yield f"model failed on this image: {_short_traceback()}"
            return
    for image in inputs:
        yield from _infer_isolating_failures(adapter, [image], conf)


def _postprocess(
    detections: Detections,
    original: np.ndarray,
    model_input: np.ndarray,
    settings: PredictSettings,
) -> Detections:
    detections = _filtered(detections, settings)
    (h, w), (mh, mw) = original.shape[:2], model_input.shape[:2]
    if (h, w) != (mh, mw):
        detections = detections.scaled(w / mw, h / mh, h, w)
    return detections


def _short_traceback() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return lines[-1] if lines else "unknown error"
