"""The Ray Data plan that turns items into prediction rows.

items (one Arrow row each, one block per model batch)
-> Ray tasks: decode each item (file, URL, in-memory pixels); an item that cannot
be decoded becomes a row carrying its error; a large file to be predicted in tiles is
not decoded here but passed on as a `BandSource`, which the worker reads band by band
-> a video segment (a keyframe-aligned run of selected frames) is decoded by one task,
which hands its frames to the workers a batch at a time
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
from engine.sources.video import DecodedFrame, decode_segment
from engine.sources.video_items import segment_of

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
        pa.field("frames", pa.list_(pa.int64())),
        pa.field("seek_frame", pa.int64()),
        pa.field("seek_pts", pa.int64()),
        pa.field("last_frame", pa.int64()),
    ]
)

#: CPU share reserved for each decode task; the blocking wait on a model worker is free.
DECODE_TASK_CPUS = 0.5


def plan_predictions(
    items: list[Item],
    workers: list[Any],
    settings: PredictSettings,
    videos: dict[str, Any] | None = None,
    fetch: Any = None,
) -> ray.data.Dataset:
    """Build the lazy Ray Data plan predicting ``items`` on ``workers``.

    Args:
        items: The resolved input items; videos already split into segment items (see
            `engine.sources.video_items.expand_videos`).
        workers: Handles of deployed `ModelWorker` actors.
        settings: Validated settings.
        videos: Path -> `VideoInfo` (or an object reference to one) of each video.
        fetch: Downloads platform images (``sly://`` URLs), e.g. a Supervisely fetcher.

    Returns:
        A Dataset whose rows follow `PREDICTION_SCHEMA`, one per image and one per
        selected video frame, in order.
    """
    # 1) one block per model batch of images, and one per video segment, so a task decodes
    #    exactly what it hands on; an explicit schema keeps every block's types the same
    table = pa.Table.from_pylist([item.to_row() for item in items], schema=ITEM_SCHEMA)
    blocks = [table.slice(start, stop - start) for start, stop in _block_bounds(items, settings)]
    dataset = ray.data.from_arrow(blocks or [table])
    # 2) decode in tasks, predict on the model workers, emit prediction rows
    return dataset.map_batches(
        predict_batch,
        batch_size=None,  # a block is a batch
        batch_format="pyarrow",
        fn_kwargs={
            "workers": workers,
            "settings": settings,
            "videos": videos or {},
            "fetch": fetch,
        },
        num_cpus=DECODE_TASK_CPUS,
    )


def _block_bounds(items: list[Item], settings: PredictSettings) -> list[tuple[int, int]]:
    """Row ranges of the blocks: runs of up to ``batch_size`` images, or one segment."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for position, item in enumerate(items):
        if item.frames is not None:
            if start < position:
                bounds.append((start, position))
            bounds.append((position, position + 1))
            start = position + 1
        elif position + 1 - start == settings.batch_size:
            bounds.append((start, position + 1))
            start = position + 1
    if start < len(items):
        bounds.append((start, len(items)))
    return bounds


def predict_batch(
    batch: pa.Table,
    workers: list[Any],
    settings: PredictSettings,
    videos: dict[str, Any] | None = None,
    fetch: Any = None,
) -> pa.Table:
    """Decode one batch of items and predict it on a model worker (a Ray Data UDF)."""
    items = [Item.from_row(row) for row in batch.to_pylist()]
    if len(items) == 1 and items[0].frames is not None:
        return predict_segment(items[0], workers, settings, (videos or {}).get(items[0].path))
    # 1) decode; a failure stays with its item
    images: dict[int, np.ndarray | BandSource] = {}
    errors: dict[int, str] = {}
    for position, item in enumerate(items):
        try:
            images[position] = _band_source(item, settings) or decode_item(
                item, settings.max_pixels, settings.url_timeout, fetch
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


def predict_segment(
    item: Item, workers: list[Any], settings: PredictSettings, info: Any = None
) -> pa.Table:
    """Decode one video segment and predict its selected frames, one row per frame.

    Frames go to the model workers in batches of ``batch_size`` while the next batch
    decodes; a frame that fails to decode is a row carrying its error.
    """
    if isinstance(info, ray.ObjectRef):
        info = ray.get(info)
    if item.error is not None:  # frames the file does not hold
        rows = []
        for offset, frame_index in enumerate(item.frames or ()):
            row = _prediction_row(item, None, Detections.empty(), item.error)
            row.update(index=item.index + offset, frame_index=frame_index)
            if info is not None:
                row.update(height=info.height, width=info.width)
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
    first_worker = item.index // settings.batch_size
    results: list[tuple[DecodedFrame, ImageResult | None]] = []
    pending: list[int] = []  # positions in results waiting for the model
    in_flight: list[tuple[list[int], Any]] = []
    sent = 0

    def submit() -> None:
        nonlocal sent
        worker = workers[(first_worker + sent) % len(workers)]
        sent += 1
        images = [results[p][0].image for p in pending]
        in_flight.append((list(pending), worker.predict.remote(images, settings)))
        pending.clear()

    def collect(keep: int) -> None:
        while len(in_flight) > keep:
            positions, ref = in_flight.pop(0)
            for position, output in zip(positions, ray.get(ref)):
                results[position] = (results[position][0], output)

    for frame in decode_segment(segment_of(item), info):
        results.append((frame, None))
        if frame.image is not None:
            pending.append(len(results) - 1)
        if len(pending) == settings.batch_size:
            submit()
            collect(keep=1)  # decode the next batch while this one is predicted
    if pending:
        submit()
    collect(keep=0)
    rows = []
    for offset, (frame, result) in enumerate(results):
        error = frame.error or (result.error if result else None)
        detections = result.detections if result and result.detections else Detections.empty()
        row = _prediction_row(item, frame.image, detections, error)
        row.update(
            index=item.index + offset, frame_index=frame.frame_index, timestamp=frame.timestamp
        )
        if frame.image is None and info is not None:
            row.update(height=info.height, width=info.width)
        rows.append(row)
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
