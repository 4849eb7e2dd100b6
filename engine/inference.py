"""Run a loaded model over decoded images: resize, micro-batch, filter, map back.

This is the work a model worker does for each batch the pipeline hands it. It is plain
Python over a `ModelAdapter`, so it is tested without Ray.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from engine.detections import Detections
from engine.models.base import ModelAdapter
from engine.settings import DEFAULT_NMS_IOU, PredictSettings
from engine.sources.bands import BandReader, BandSource, shrunk_whole_image
from engine.sources.decode import ImageLoadError


@dataclass
class ImageResult:
    """The outcome for one image: its detections, or why it failed."""

    detections: Detections | None
    error: str | None = None
    latency_s: float | None = None


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HWC RGB uint8 image to (height, width) with bilinear filtering."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


#: The gray a letterboxed image is padded with (Ultralytics' value).
LETTERBOX_GRAY = 114


def letterbox_image(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Placement]:
    """Scale an image to fit (height, width) keeping its aspect ratio; pad it, centred.

    Returns:
        The padded image, and where the scaled image lies in it.

    Example:
        >>> padded, placed = letterbox_image(np.zeros((50, 100, 3), np.uint8), (64, 64))
        >>> padded.shape, placed
        ((64, 64, 3), Placement(x=0, y=16, height=32, width=64))
    """
    height, width = image.shape[:2]
    scale = min(size[0] / height, size[1] / width)
    inner_h = max(1, min(size[0], round(height * scale)))
    inner_w = max(1, min(size[1], round(width * scale)))
    placed = Placement((size[1] - inner_w) // 2, (size[0] - inner_h) // 2, inner_h, inner_w)
    padded = np.full((size[0], size[1], 3), LETTERBOX_GRAY, np.uint8)
    padded[placed.y : placed.y + inner_h, placed.x : placed.x + inner_w] = resize_image(
        image, (inner_h, inner_w)
    )
    return padded, placed


class Placement(NamedTuple):
    """Where the (resized) image lies inside the model's input: offset and size."""

    x: int
    y: int
    height: int
    width: int


def _model_input(image: np.ndarray, settings: PredictSettings) -> tuple[np.ndarray, Placement]:
    """The image as the model gets it (stretched, letterboxed or as is), and its place."""
    size = settings.general.img_size
    if size is None:
        return image, Placement(0, 0, image.shape[0], image.shape[1])
    if settings.general.letterbox:
        return letterbox_image(image, size)
    return resize_image(image, size), Placement(0, 0, size[0], size[1])


def predict_images(
    adapter: ModelAdapter, images: Sequence[np.ndarray | BandSource], settings: PredictSettings
) -> list[ImageResult]:
    """Predict every image, in micro-batches of ``settings.general.batch_size``.

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
    if settings.tiling.sliding_window:
        return predict_images_tiled(adapter, images, settings)
    if any(isinstance(image, BandSource) for image in images):
        raise TypeError("images read in bands (BandSource) are only predicted in tiles")
    results: list[ImageResult] = []
    for start in range(0, len(images), settings.general.batch_size):
        originals = list(images[start : start + settings.general.batch_size])
        prepared = [_model_input(im, settings) for im in originals]
        inputs = [pixels for pixels, _ in prepared]
        started = time.perf_counter()
        own_nms = adapter.use_nms(settings.general.iou, settings.general.max_det)
        outcomes = list(_infer_isolating_failures(adapter, inputs, settings.general.conf))
        share = (time.perf_counter() - started) / len(inputs)
        for original, (_, placed), outcome in zip(originals, prepared, outcomes):
            if isinstance(outcome, str):
                results.append(ImageResult(None, outcome))
                continue
            found = _postprocess(outcome, original, placed, settings, own_nms)
            results.append(ImageResult(found, latency_s=share))
    return results


def predict_images_tiled(
    adapter: ModelAdapter, images: Sequence[np.ndarray | BandSource], settings: PredictSettings
) -> list[ImageResult]:
    """Predict every image in overlapping tiles; tiles of all images share model batches.

    1) resize each image to ``img_size`` when one is set, then cut it into tiles, row of
       tiles by row of tiles (views, not copies), plus the whole image when
       ``full_image``; a `BandSource` (a large file) is read one band of rows at a time,
       so only the rows its current tiles need are in memory;
    2) run every tile of every image through the adapter in micro-batches of
       ``batch_size``, isolating a failing tile to its image;
    3) per image: keep objects at or above ``conf`` and of the wanted classes, move them
       from tile to image pixels, and merge the duplicates that overlapping tiles found;
    4) scale the objects back into original-image pixels.
    """
    from engine.tiling import merge_detections

    errors: dict[int, str] = {}
    views: list[_TiledView | None] = []
    for index, image in enumerate(images):
        try:
            views.append(_TiledView(image, settings))
        except ImageLoadError as exc:
            errors[index] = str(exc)
            views.append(None)
    # the model's own NMS (if any) at this call's iou on each tile, or at its built value
    # when none is asked for (an earlier call's iou must not stay); Tessera's after the merge
    adapter.use_nms(settings.general.iou, settings.general.max_det)
    # 1) + 2) crops are cut lazily, so a band is dropped once its tiles are predicted
    parts: list[list[Detections]] = [[] for _ in images]
    windows: list[list[np.ndarray]] = [[] for _ in images]  # each detection's tile
    spent = [0.0] * len(images)
    for chunk in _batched(_crops(views, settings, errors), settings.general.batch_size):
        started = time.perf_counter()
        outcomes = list(
            _infer_isolating_failures(adapter, [c.pixels for c in chunk], settings.general.conf)
        )
        share = (time.perf_counter() - started) / len(chunk)
        for crop, outcome in zip(chunk, outcomes):
            spent[crop.index] += share
            if isinstance(outcome, str):
                errors.setdefault(crop.index, outcome)
                continue
            # 3) filter first (it makes merging cheap), then move into image pixels
            found = _filtered(outcome, settings)
            if len(found) or not parts[crop.index]:
                parts[crop.index].append(crop.place(found))
                windows[crop.index].append(np.tile(crop.window, (len(found), 1)))
    results = []
    for index, view in enumerate(views):
        if index in errors or view is None:
            results.append(ImageResult(None, errors[index]))
            continue
        merged = merge_detections(
            Detections.merge(parts[index]),
            method=settings.tiling.merge,
            metric=settings.tiling.merge_metric,
            threshold=settings.tiling.merge_threshold,
            class_agnostic=settings.tiling.class_agnostic,
            windows=np.concatenate(windows[index]),
            image_size=(view.height, view.width),
            sahi_compatible=settings.tiling.sahi_compatible,
        )
        merged = _limited(merged, settings)
        # 4) back into original pixels
        (h, w), (mh, mw) = view.original_size, (view.height, view.width)
        if (h, w) != (mh, mw):
            merged = merged.scaled(w / mw, h / mh, h, w)
        results.append(ImageResult(merged, latency_s=spent[index]))
    return results


@dataclass
class _Crop:
    """One model input cut from an image: a tile, or the whole image shrunk by ``scale``."""

    index: int
    x: int
    y: int
    pixels: np.ndarray
    height: int  # of the (resized) image the crop came from
    width: int
    scale: tuple[float, float] = (1.0, 1.0)

    @property
    def window(self) -> np.ndarray:
        """The crop's x1, y1, x2, y2 in the pixels of its image (the whole image if shrunk)."""
        if self.scale != (1.0, 1.0):
            return np.array([0, 0, self.width, self.height], np.float32)
        h, w = self.pixels.shape[:2]
        return np.array([self.x, self.y, self.x + w, self.y + h], np.float32)

    def place(self, found: Detections) -> Detections:
        """Move the crop's detections into the pixels of the image it was cut from."""
        if self.scale != (1.0, 1.0):
            return found.scaled(*self.scale, self.height, self.width)
        return found.shifted(self.x, self.y, self.height, self.width)


class _TiledView:
    """An image to tile: an array, or a `BandSource` read band by band."""

    def __init__(self, image: np.ndarray | BandSource, settings: PredictSettings) -> None:
        self.image = image
        self.original_size = tuple(image.shape[:2])
        size = settings.general.img_size
        if isinstance(image, BandSource):
            self.reader: BandReader | None = BandReader(image, size)
            self.array: np.ndarray | None = None
            self.height, self.width = self.reader.height, self.reader.width
        else:
            self.reader = None
            self.array = resize_image(image, size) if size else image
            self.height, self.width = self.array.shape[:2]

    def rows(self, top: int, bottom: int) -> np.ndarray:
        if self.array is not None:
            return self.array[top:bottom]
        return self.reader.rows(top, bottom)

    def whole(self, max_side: int) -> np.ndarray:
        if self.array is not None:
            return self.array
        return shrunk_whole_image(self.image, max_side)


def _crops(
    views: list[_TiledView | None], settings: PredictSettings, errors: dict[int, str]
) -> Iterator[_Crop]:
    """Every tile of every image, row by row; an image that fails to read stops there."""
    from engine.tiling import tile_grid

    for index, view in enumerate(views):
        if view is None:
            continue
        tiles = tile_grid(
            view.height, view.width, settings.tiling.window_size, settings.tiling.overlap
        )
        rows: dict[int, list] = {}
        for tile in tiles:
            rows.setdefault(tile.y, []).append(tile)
        try:
            for y, row in rows.items():
                if index in errors:
                    break
                band = view.rows(y, y + row[0].height)
                for tile in row:
                    pixels = band[:, tile.x : tile.x + tile.width]
                    yield _Crop(index, tile.x, tile.y, pixels, view.height, view.width)
            if settings.tiling.full_image and index not in errors:
                whole = view.whole(max(settings.tiling.window_size))
                scale = (view.width / whole.shape[1], view.height / whole.shape[0])
                yield _Crop(index, 0, 0, whole, view.height, view.width, scale)
        except ImageLoadError as exc:
            errors.setdefault(index, str(exc))


def _batched(crops: Iterator[_Crop], size: int) -> Iterator[list[_Crop]]:
    chunk: list[_Crop] = []
    for crop in crops:
        chunk.append(crop)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _filtered(detections: Detections, settings: PredictSettings) -> Detections:
    detections = detections.with_min_score(settings.general.conf)
    if settings.general.class_idxs is not None:
        detections = detections.with_classes(settings.general.class_idxs)
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
    placed: Placement,
    settings: PredictSettings,
    own_nms: bool = False,
) -> Detections:
    detections = _limited(_filtered(detections, settings), settings, own_nms)
    if settings.general.letterbox:  # out of the padding, into the scaled image
        detections = detections.shifted(-placed.x, -placed.y, placed.height, placed.width)
    (h, w), (mh, mw) = original.shape[:2], (placed.height, placed.width)
    if (h, w) != (mh, mw):
        detections = detections.scaled(w / mw, h / mh, h, w)
    return detections


def _limited(
    detections: Detections, settings: PredictSettings, own_nms: bool = False
) -> Detections:
    """One image's objects after ``iou``/``agnostic_nms`` suppression and ``max_det``.

    With ``own_nms`` the model already suppressed overlaps at ``iou`` (per class), so only
    ``agnostic_nms`` runs here.
    """
    from engine.tiling import merge_detections

    general = settings.general
    if (general.iou is not None and not own_nms) or general.agnostic_nms:
        detections = merge_detections(
            detections,
            method="nms",
            metric="iou",
            threshold=DEFAULT_NMS_IOU if general.iou is None else general.iou,
            class_agnostic=general.agnostic_nms,
        )
    if general.max_det is not None and len(detections) > general.max_det:
        best = np.argsort(-detections.scores, kind="stable")[: general.max_det]
        detections = detections[np.sort(best)]
    return detections


def _short_traceback() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return lines[-1] if lines else "unknown error"
