"""The Ray Data plan that turns items into prediction rows.

items (one Arrow row each, one block per model batch)
-> Ray tasks: decode each item (file, URL, in-memory pixels); an item that cannot
be decoded becomes a row carrying its error; a large file to be predicted in tiles is
not decoded here but passed on as a `BandSource`, which the worker reads band by band
-> the decoded batch goes to one of the deployed model workers (Ray actors that
hold the loaded model) while the task's siblings decode the next batches
-> prediction rows (PREDICTION_SCHEMA), exactly one per item, in input order
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import ray

from engine.detections import Detections
from engine.inference import ImageResult
from engine.prediction import PREDICTION_SCHEMA
from engine.settings import PredictSettings
from engine.sources.bands import BandSource, band_source_for
from engine.sources.decode import ImageLoadError, decode_item
from engine.sources.items import Item

#: Arrow schema of an input item row (see `engine.sources.items.Item.to_row`).
ITEM_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64()),
        pa.field("source", pa.string()),
        pa.field("name", pa.string()),
        pa.field("path", pa.string()),
        pa.field("url", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("pixels", pa.large_binary()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("error", pa.string()),
    ]
)

#: CPU share reserved for each decode task; the blocking wait on a model worker is free.
DECODE_TASK_CPUS = 0.5


def plan_predictions(
    items: list[Item], workers: list[Any], settings: PredictSettings
) -> ray.data.Dataset:
    """Build the lazy Ray Data plan predicting ``items`` on ``workers``.

    Args:
        items: The resolved input items.
        workers: Handles of deployed `ModelWorker` actors.
        settings: Validated settings.

    Returns:
        A Dataset whose rows follow `PREDICTION_SCHEMA`, one per item, in order.
    """
    # 1) one block per model batch, so a task decodes exactly what one forward pass needs;
    #    an explicit schema keeps every block's column types the same
    table = pa.Table.from_pylist([item.to_row() for item in items], schema=ITEM_SCHEMA)
    size = settings.batch_size
    blocks = [table.slice(start, size) for start in range(0, max(len(items), 1), size)]
    dataset = ray.data.from_arrow(blocks)
    # 2) decode in tasks, predict on the model workers, emit prediction rows
    return dataset.map_batches(
        predict_batch,
        batch_size=settings.batch_size,
        batch_format="pyarrow",
        fn_kwargs={"workers": workers, "settings": settings},
        num_cpus=DECODE_TASK_CPUS,
    )


def predict_batch(batch: pa.Table, workers: list[Any], settings: PredictSettings) -> pa.Table:
    """Decode one batch of items and predict it on a model worker (a Ray Data UDF)."""
    items = [Item.from_row(row) for row in batch.to_pylist()]
    # 1) decode; a failure stays with its item
    images: dict[int, np.ndarray | BandSource] = {}
    errors: dict[int, str] = {}
    for position, item in enumerate(items):
        try:
            images[position] = _band_source(item, settings) or decode_item(
                item, settings.max_pixels, settings.url_timeout
            )
        except ImageLoadError as exc:
            errors[position] = str(exc)
        except Exception as exc:  # an unexpected decoder failure must not lose the batch
            errors[position] = f"{item.name}: cannot decode image: {type(exc).__name__}: {exc}"
    # 2) predict the decoded images on one worker, spreading batches over the workers
    results: dict[int, ImageResult] = {}
    if images:
        worker = workers[(items[0].index // settings.batch_size) % len(workers)]
        positions = list(images)
        outputs = ray.get(worker.predict.remote([images[p] for p in positions], settings))
        results = dict(zip(positions, outputs))
    # 3) exactly one row per item
    rows = []
    for position, item in enumerate(items):
        image = images.get(position)
        result = results.get(position)
        error = errors.get(position) or (result.error if result else None)
        detections = result.detections if result and result.detections else Detections.empty()
        rows.append(_prediction_row(item, image, detections, error))
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def _band_source(item: Item, settings: PredictSettings) -> BandSource | None:
    """A large local file to be tiled is read by the worker in bands, not decoded here."""
    if not settings.sliding_window or item.error or item.path is None or item.in_memory:
        return None
    return band_source_for(item.path, item.name, settings.max_pixels)


def _prediction_row(
    item: Item, image: np.ndarray | BandSource | None, detections: Detections, error: str | None
) -> dict[str, Any]:
    height, width = image.shape[:2] if image is not None else (0, 0)
    return {
        "index": item.index,
        "source": item.source,
        "name": item.name,
        "path": item.path,
        "url": item.url,
        "dataset": item.dataset,
        "frame_index": None,
        "timestamp": None,
        "height": height,
        "width": width,
        "error": error,
        **detections.to_arrow(),
    }
