"""The Ray Data plan that turns items into prediction rows.

items (one Arrow row each, one block per model batch)
-> Ray tasks: decode each item (file, URL, in-memory pixels); a large in-memory image is
not carried in its block but put in the object store once, where its model worker reads
it (`engine.stored_images`); an item that cannot
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

from engine.inference import ImageResult
from engine.item_prediction import decode_items, item_prediction, predict_decoded
from engine.schemas import PREDICTION_SCHEMA
from engine.settings import PredictSettings
from engine.sources.items import Item, items_from_table, items_table
from engine.sources.video import DecodedFrame, decode_segment
from engine.sources.video_items import segment_of
from engine.stored_images import StoredImage, store_large_images

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
        fetch: Downloads platform media by URL (`engine.sources.fetch.MediaFetcher`).

    Returns:
        A Dataset whose rows follow `PREDICTION_SCHEMA`, one per image and one per
        selected video frame, in order.
    """
    # 1) one block per model batch of images, and one per video segment, so a task decodes
    #    exactly what it hands on; an explicit schema keeps every block's types the same
    items, stored = store_large_images(items, settings.general.max_pixels)
    table = items_table(items)
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
            "stored": stored,
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
        elif position + 1 - start == settings.general.batch_size:
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
    stored: dict[int, StoredImage] | None = None,
) -> pa.Table:
    """Decode one batch of items and predict it on a model worker (a Ray Data UDF).

    The images in ``stored`` (by item index) are not decoded here: the worker reads them.
    """
    items = items_from_table(batch)
    if len(items) == 1 and items[0].frames is not None:
        return predict_segment(items[0], workers, settings, (videos or {}).get(items[0].path))
    # 1) decode, a failure staying with its item; 2) predict on one worker, spreading
    #    batches over the workers; 3) exactly one row per item
    worker = workers[(items[0].index // settings.general.batch_size) % len(workers)]
    predictions = predict_decoded(
        decode_items(items, settings, fetch, in_bands=True, ready=stored),
        lambda images: ray.get(worker.predict.remote(images, settings)),
    )
    return pa.Table.from_pylist([p.to_row() for p in predictions], schema=PREDICTION_SCHEMA)


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
        failed = ImageResult(None, item.error)
        rows = [
            _frame_row(item, offset, frame_index, None, None, failed, info)
            for offset, frame_index in enumerate(item.frames or ())
        ]
        return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)
    first_worker = item.index // settings.general.batch_size
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
        if len(pending) == settings.general.batch_size:
            submit()
            collect(keep=1)  # decode the next batch while this one is predicted
    if pending:
        submit()
    collect(keep=0)
    rows = []
    for offset, (frame, result) in enumerate(results):
        outcome = result or ImageResult(None, frame.error)
        row = _frame_row(
            item, offset, frame.frame_index, frame.timestamp, frame.image, outcome, info
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA)


def _frame_row(
    item: Item,
    offset: int,
    frame_index: int,
    timestamp: float | None,
    image: np.ndarray | None,
    result: ImageResult,
    info: Any,
) -> dict[str, Any]:
    """The prediction row of a segment's frame; a frame without image takes the video's size."""
    if image is not None:
        size = image.shape[:2]
    else:
        size = (info.height, info.width) if info is not None else (0, 0)
    prediction = item_prediction(item, result, size)
    prediction.index = item.index + offset
    prediction.frame_index, prediction.timestamp = frame_index, timestamp
    return prediction.to_row()
