"""Items -> decoded images -> a model -> exactly one `Prediction` per item.

This is the one path from an input item to its Prediction. Batch prediction (a decode
task of the pipeline, sending to a model worker), the Serve handle client and the HTTP
ingress all take it; they differ only in how decoded images reach the model: the
``predict`` function given to `predict_decoded` calls a model worker, a Serve handle or
`engine.inference.predict_images` itself. Plain Python over that function, so it is
tested without Ray.

Example:
    >>> from engine.inference import predict_images
    >>> from engine.models.reference import ColorBoxDetector
    >>> from engine.settings import ModelInfo, validate_settings
    >>> adapter = ColorBoxDetector(); adapter.load("cpu")
    >>> info = ModelInfo.of(adapter)
    >>> settings = validate_settings({}, info)
    >>> pixels = np.zeros((20, 20, 3), np.uint8); pixels[2:6, 3:9] = (255, 0, 0)
    >>> items = [Item(0, "array", "array_0", pixels=pixels.tobytes(), shape=(20, 20, 3)),
    ...          Item(1, "file", "gone.png", path="/nowhere/gone.png")]
    >>> decoded = decode_items(items, settings)
    >>> found = predict_decoded(decoded, lambda images: predict_images(adapter, images, settings),
    ...                         info.classes, info.task)
    >>> found[0].boxes.tolist(), found[1].error.startswith("file not found")
    ([[3.0, 2.0, 9.0, 6.0]], True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.detections import Detections
from engine.inference import ImageResult
from engine.prediction import Prediction
from engine.schemas import ITEM_ORIGIN
from engine.settings import PredictSettings
from engine.sources.bands import BandSource, band_source_for
from engine.sources.decode import ImageLoadError, decode_item
from engine.sources.items import Item

#: Predicts decoded images: one `ImageResult` per image, in order.
PredictFn = Callable[[list[np.ndarray | BandSource]], Sequence[ImageResult]]


@dataclass
class DecodedItem:
    """An item ready for the model: its decoded image, or why it could not be decoded.

    Attributes:
        item: The input item.
        image: HWC RGB uint8 pixels, a `BandSource` the model reads in bands, or another
            stand-in the model's side reads (with the image's ``shape``); None when
            decoding failed.
        error: Why the item could not be decoded, else None.
    """

    item: Item
    image: np.ndarray | BandSource | Any | None = None
    error: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original image; (0, 0) when it could not be decoded."""
        if self.image is None:
            return (0, 0)
        height, width = self.image.shape[:2]
        return (int(height), int(width))


def decode_items(
    items: Sequence[Item],
    settings: PredictSettings,
    fetch: Callable[[str], bytes] | None = None,
    in_bands: bool = False,
    ready: Mapping[int, Any] | None = None,
) -> list[DecodedItem]:
    """Decode every item for the model; a failure stays with its item.

    Args:
        items: The items, in order.
        settings: Validated settings (pixel limit, URL timeout, tiling).
        fetch: Downloads a platform media URL (see `engine.sources.decode.decode_item`).
        in_bands: With a sliding window, pass a large local file as a `BandSource`, which
            the model reads band by band, instead of decoding it here (the model's
            process must see the same files).
        ready: Item index -> an image held elsewhere, handed on as it is, not decoded
            (e.g. an `engine.stored_images.StoredImage`, which its worker reads).

    Returns:
        One DecodedItem per item, in order.
    """
    decoded = []
    for item in items:
        if ready and item.index in ready:
            decoded.append(DecodedItem(item, ready[item.index]))
            continue
        try:
            image = (in_bands and _band_source(item, settings)) or decode_item(
                item, settings.general.max_pixels, settings.general.url_timeout, fetch
            )
            decoded.append(DecodedItem(item, image))
        except ImageLoadError as exc:
            decoded.append(DecodedItem(item, error=str(exc)))
        except Exception as exc:  # an unexpected decoder failure stays with its item
            reason = f"{item.name}: cannot decode image: {type(exc).__name__}: {exc}"
            decoded.append(DecodedItem(item, error=reason))
    return decoded


def predict_decoded(
    decoded: Sequence[DecodedItem],
    predict: PredictFn,
    class_names: Sequence[str] = (),
    task: str = "detection",
) -> list[Prediction]:
    """Predict the items that decoded, in one call of ``predict``; one Prediction per item.

    Args:
        decoded: The items with their images (`decode_items`).
        predict: Predicts a list of images (a model worker, a Serve handle...).
        class_names: The model's classes.
        task: The model's task.

    Returns:
        One Prediction per item, in order: an item that failed to decode or to predict
        carries its ``error``.
    """
    ready = [position for position, d in enumerate(decoded) if d.image is not None]
    outputs = list(predict([decoded[p].image for p in ready])) if ready else []
    if len(outputs) != len(ready):
        raise RuntimeError(f"the model returned {len(outputs)} results for {len(ready)} images")
    results = dict(zip(ready, outputs))
    return [
        item_prediction(
            d.item, results.get(position, ImageResult(None, d.error)), d.size, class_names, task
        )
        for position, d in enumerate(decoded)
    ]


def item_prediction(
    item: Item,
    result: ImageResult,
    size: tuple[int, int] = (0, 0),
    class_names: Sequence[str] = (),
    task: str = "detection",
) -> Prediction:
    """The Prediction of one item: its origin, its image's size and the model's result.

    An in-memory item (array, PIL) lends the Prediction its image.

    Args:
        item: The input item.
        result: The model's result (detections, or an error).
        size: (height, width) of the original image; (0, 0) when it was not decoded.
        class_names: The model's classes.
        task: The model's task.

    Returns:
        The Prediction; no detections when the result carries none.

    Example:
        >>> p = item_prediction(Item(3, "url", "a.jpg", url="http://h/a.jpg"),
        ...                     ImageResult(None, "HTTP 404"))
        >>> p.index, p.url, p.error, len(p)
        (3, 'http://h/a.jpg', 'HTTP 404', 0)
    """
    image = item.image_array() if item.in_memory and item.pixels is not None else None
    return Prediction(
        detections=result.detections if result.detections is not None else Detections.empty(),
        class_names=list(class_names),
        height=int(size[0]),
        width=int(size[1]),
        error=result.error,
        latency_ms=None if result.latency_s is None else result.latency_s * 1000.0,
        index=item.index,
        task=task,
        image=image,
        **{name: getattr(item, name) for name in ITEM_ORIGIN},
    )


def _band_source(item: Item, settings: PredictSettings) -> BandSource | None:
    """A large local file to be tiled, read by the model in bands; None for any other item."""
    if not settings.tiling.sliding_window or item.error or item.path is None or item.in_memory:
        return None
    return band_source_for(item.path, item.name, settings.general.max_pixels)
