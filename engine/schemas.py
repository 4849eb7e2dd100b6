"""The rows of a prediction plan: item rows in, prediction rows out, as Arrow schemas.

Both rows open with the index and where the item came from (`ITEM_ORIGIN`); a prediction
row adds the video frame (``frame_index``, ``timestamp``), the image size, the error, the
model's time for the image (``latency_ms``; together `PREDICTION_FIELDS`) and the
`Detections` columns. This is the one place these fields are declared: `Item.to_row`,
`Prediction.to_row`, `Prediction.from_arrow`, the JSON codec (`engine.prediction_json`) and
`engine.item_prediction` take them from here.

Example:
    >>> ITEM_ORIGIN
    ('source', 'name', 'path', 'url', 'dataset')
    >>> PREDICTION_FIELDS[-5:]
    ('timestamp', 'height', 'width', 'error', 'latency_ms')
"""

from __future__ import annotations

import pyarrow as pa

from engine.detections import DETECTIONS_ARROW_FIELDS

#: Where an item came from: the kind of input, its display name, local file, URL, dataset.
_ITEM_ORIGIN_FIELDS = (
    pa.field("source", pa.string()),
    pa.field("name", pa.string()),
    pa.field("path", pa.string()),
    pa.field("url", pa.string()),
    pa.field("dataset", pa.string()),
)
#: A prediction's origin: its item's, then the video frame (source index, time in seconds).
_PREDICTION_ORIGIN_FIELDS = (
    *_ITEM_ORIGIN_FIELDS,
    pa.field("frame_index", pa.int64()),
    pa.field("timestamp", pa.float64()),
)

#: Arrow schema of an input item row (`engine.sources.items.Item.to_row`).
ITEM_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64()),
        *_ITEM_ORIGIN_FIELDS,
        pa.field("pixels", pa.large_binary()),
        pa.field("shape", pa.list_(pa.int64())),
        pa.field("error", pa.string()),
        pa.field("frames", pa.list_(pa.int64())),
        pa.field("seek_frame", pa.int64()),
        pa.field("seek_pts", pa.int64()),
        pa.field("last_frame", pa.int64()),
    ]
)

#: Arrow schema of a prediction row, as the pipeline produces it (`Prediction.to_row`).
PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64()),
        *_PREDICTION_ORIGIN_FIELDS,
        pa.field("height", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("error", pa.string()),
        pa.field("latency_ms", pa.float64()),
        *DETECTIONS_ARROW_FIELDS,
    ]
)

#: The origin fields an `Item` and the `Prediction` made of it share.
ITEM_ORIGIN: tuple[str, ...] = tuple(f.name for f in _ITEM_ORIGIN_FIELDS)
#: The columns of a prediction row that are `Prediction` attributes (index, origin, size,
#: error); the others are the `Detections` columns.
PREDICTION_FIELDS: tuple[str, ...] = tuple(
    name
    for name in PREDICTION_SCHEMA.names
    if name not in {f.name for f in DETECTIONS_ARROW_FIELDS}
)
